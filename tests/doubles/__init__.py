"""TEST DOUBLES of servers that cannot run here (Marathon, Mesos, WebHDFS), written from the
official specs in ../shared/specs. They live under tests/ only and never ship as a runtime backend."""
