"""The supervisor's healing loop, step by step: a dead component is restarted after a backoff that
doubles while restarts keep failing, every step is visible in cluster.json, and a process that is
alive but stops answering is restarted after HUNG_AFTER. (The real processes are killed in
tests/e2e/test_healing.py; this pins the sequence of decisions.)"""

from __future__ import annotations

import json

from boidcluster.cli import supervisor as sv


class Child:
    """A component as the supervisor sees it: start/died/probe/stop (no process behind it)."""

    name = "chain"
    address = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.alive, self.answers, self.fail_starts, self.starts, self.stops = True, True, 0, 0, 0

    @property
    def pid(self):
        return 42 if self.alive else None

    def start(self) -> None:
        self.starts += 1
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("the chain node exited with 1:\nlog tail")
        self.alive = True

    def died(self):
        return None if self.alive else "killed by SIGKILL"

    def probe(self) -> bool:
        return self.answers

    def stop(self) -> None:
        self.stops += 1
        self.alive = False


def supervisor(tmp_path, child):
    s = sv.Supervisor(tmp_path, ["alice"])
    s.children.append(child)
    s.health[child.name] = sv.ComponentHealth(state="running", pid=child.pid, address=child.address)
    s.info.update(ready=True, phase="running")
    s.reap = lambda: None  # this test process's other children are not the supervisor's to reap
    return s


def recorded(tmp_path) -> dict:
    return json.loads((tmp_path / "cluster.json").read_text())["components"]["chain"]


def test_backoff_doubles_while_restarts_fail_and_every_step_is_recorded(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: clock[0])
    child = Child()
    s = supervisor(tmp_path, child)
    child.alive, child.fail_starts = False, 2
    s.tick()
    h = s.health["chain"]
    assert h.state == "restarting" and h.next_try == 1001.0 and s.info["ready"] is False
    assert recorded(tmp_path)["last_exit"] == "killed by SIGKILL" and recorded(tmp_path)["restarts"] == 1
    s.tick()
    assert child.starts == 0  # not before its backoff
    delays = []
    for _ in range(3):
        clock[0] = h.next_try
        s.tick()
        delays.append(h.next_try - clock[0])
    assert child.starts == 3 and h.state == "running" and s.info["ready"] is True
    assert delays[:2] == [2.0, 4.0]  # doubled after each failed start
    assert recorded(tmp_path)["message"] == "restarted (last exit: killed by SIGKILL)"


def test_a_process_that_stops_answering_is_restarted_after_hung_after(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: clock[0])
    child = Child()
    s = supervisor(tmp_path, child)
    child.answers = False
    s.tick()
    assert s.health["chain"].state == "unhealthy" and child.stops == 0
    clock[0] += sv.HUNG_AFTER + sv.PROBE_EVERY
    s.tick()
    assert child.stops == 1 and s.health["chain"].state == "restarting"
    assert "not answering" in s.health["chain"].last_exit
