"""The Dispatcher's event source and slot sharing, without processes: a backend that only
queues updates (the Backend interface; capacity() as the local backend has it)."""

from __future__ import annotations

import queue

from boidcluster.adapters.backend import TaskSpec, TaskUpdate
from boidcluster.reconcilers.jobs.dispatcher import Dispatcher, waterfill


class QueueBackend:
    """Accepts every submit and reports only the updates a test puts in."""

    name = "queue"

    def __init__(self, slots: int) -> None:
        self.slots, self.q, self.submitted = slots, queue.Queue(), []

    def submit(self, task: TaskSpec) -> None:
        self.submitted.append(task.task_id)

    def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
        out = []
        try:
            out.append(self.q.get(timeout=timeout) if timeout else self.q.get_nowait())
            while True:
                out.append(self.q.get_nowait())
        except queue.Empty:
            return out

    def kill(self, task_id: str) -> None: ...
    def reconcile(self, task_ids: list[str]) -> None: ...
    def contributors(self) -> list[str]:
        return ["alice"]

    def capacity(self) -> int:
        return self.slots

    def close(self) -> None: ...


def task(tid: str) -> TaskSpec:
    return TaskSpec(task_id=tid, job="j", unit="u", command=["true"], env={}, output_dir="o")


def test_waterfill_is_max_min_fair_and_never_over_capacity():
    assert waterfill(8, {"a": 100, "b": 100}) == {"a": 4, "b": 4}
    assert waterfill(8, {"a": 1, "b": 100}) == {"a": 1, "b": 7}
    assert sum(waterfill(3, {k: 5 for k in "abcdef"}).values()) == 3


def test_a_job_takes_the_slots_its_protocols_other_jobs_leave_free():
    d = Dispatcher(QueueBackend(4), overcommit=1)
    # a thousand small jobs of one protocol: whichever is looked at may use free slots
    for i in range(1000):
        d.allowance("p", f"job{i:04d}", 0, 2)
    assert d.allowance("p", "job0999", 0, 2) == 2
    d.allowance("p", "job0999", 2, 0)
    assert d.allowance("p", "job0500", 0, 2) == 2
    d.allowance("p", "job0500", 2, 0)
    assert d.allowance("p", "job0001", 0, 2) == 0   # all 4 slots taken


def test_protocols_share_capacity_fairly():
    d = Dispatcher(QueueBackend(4), overcommit=2)
    d.allowance("p1", "a", 0, 100)
    assert d.allowance("p2", "b", 0, 100) == 4
    assert d.allowance("p1", "a", 0, 100) == 4


def test_task_updates_notify_their_job_and_a_freed_slot_wakes_a_waiting_job():
    b = QueueBackend(1)
    d = Dispatcher(b, poll=0.01, batch_window=0)
    seen: list[str] = []
    d.submit(task("t1"), ("first", "uid-1"))
    d.wait_for_slot("second")
    d.wait_for_slot("third")
    b.q.put(TaskUpdate("t1", "RUNNING"))
    d.poll()
    assert seen == []          # nobody subscribed yet: nothing to notify, the update is kept
    stop = d.subscribe(seen.append)
    try:
        b.q.put(TaskUpdate("t1", "FINISHED", exit_code=0))
        import time
        end = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        assert sorted(seen) == ["first", "second"]      # the owner, and one waiter per freed slot
        assert d.take_changed("uid-1") == {"t1"} and d.take_changed("uid-1") == set()
        assert d.update("t1").state == "FINISHED"
    finally:
        stop()
