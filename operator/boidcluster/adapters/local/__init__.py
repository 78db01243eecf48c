"""Embedded local servers (ZooKeeper, an Antelope node) started as child processes on loopback."""
