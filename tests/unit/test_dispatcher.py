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


def ended(tid: str, ran: float, at: float = 1000.0) -> TaskUpdate:
    return TaskUpdate(tid, "FINISHED", exit_code=0, started_at=at, finished_at=at + ran)


def test_short_tasks_get_a_deeper_queue_long_ones_keep_overcommit():
    """A slot's next task must already be queued when its task ends; with short tasks the
    dispatch loop's latency is many tasks long, so about queue_seconds of work is queued per
    slot (never more than max_overcommit tasks); with long tasks a later job never waits
    behind more than `overcommit` tasks per slot."""
    d = Dispatcher(QueueBackend(4), overcommit=2, max_overcommit=16, queue_seconds=0.25)
    assert d.depth() == 2 and d.allowance("p", "a", 0, 1000) == 8       # nothing measured yet
    d._ingest([ended(f"t{i}", 0.025) for i in range(50)])               # `true`: 25 ms each
    assert d.depth() == 11 and d.allowance("p", "a", 0, 1000) == 44
    d._ingest([ended(f"t{i}", 0.0001) for i in range(50, 200)])         # even shorter: capped
    assert d.depth() == 16 and d.allowance("p", "a", 0, 1000) == 64
    d._ingest([ended(f"t{i}", 60.0) for i in range(200, 300)])          # minutes-long units
    assert d.depth() == 2 and d.allowance("p", "a", 0, 1000) == 8
    d._ingest([ended("t0", 0.0001)])                                    # a repeated update is ignored
    assert d.depth() == 2


class Trickle(QueueBackend):
    """Hands out the updates of `bursts` one burst per call of updates(), then nothing."""

    def __init__(self, bursts: list[list[TaskUpdate]]) -> None:
        super().__init__(1)
        self.bursts, self.calls = list(bursts), 0

    def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
        self.calls += 1
        return self.bursts.pop(0) if self.bursts else []


def test_a_burst_is_gathered_while_it_lasts_and_not_a_window_longer():
    """A stream of task ends costs one pass per window; the end of a stream is passed on after
    one quiet gap (the job's last units are not held back a whole window)."""
    b = Trickle([[ended("t1", 0.1)], [ended("t2", 0.1), ended("t3", 0.1)], [ended("t4", 0.1)]])
    d = Dispatcher(b, batch_window=60.0, batch_gap=0.001)
    assert [u.task_id for u in d._gather()] == ["t1", "t2", "t3", "t4"]   # one batch, however long it flows
    assert b.calls == 4                                                  # and one empty look ends it
    quiet = Trickle([])
    d = Dispatcher(quiet, batch_window=60.0, batch_gap=0.001)
    assert d._gather() == [] and quiet.calls == 1                        # nothing more: no window's wait


def test_a_stream_that_never_pauses_is_still_cut_at_the_window():
    class Endless(QueueBackend):
        n = 0

        def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
            self.n += 1
            return [ended(f"t{self.n}", 0.1)]

    d = Dispatcher(Endless(1), batch_window=0.02, batch_gap=0.001)
    assert len(d._gather()) >= 1   # returns: the pass is not starved by a busy backend
