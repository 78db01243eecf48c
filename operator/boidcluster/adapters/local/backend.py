"""The `local` execution backend: work units in sandboxed containers (or, for development, host
processes) on this machine.

Each *slot* runs one task at a time and stands for one contributor identity (an EOS account, e.g.
alice, bob): that account is credited for the slot's work. This is the embedded default of
`boidctl up` and what the tests use; a cluster uses the `mesos` backend behind the same
interface (adapters/backend.py).

Why it is shaped so:
- `submit` only queues; a task starts when a slot is free whose contributor is not excluded, not
  already running another replica of the same unit, and allowed by the task's `boid_account` /
  `hostname` constraints (LIKE, UNLIKE, IS, CLUSTER; other operators are ignored here). Every state
  change is an update on one queue, so the dispatcher consumes local and Mesos tasks alike.
- Each slot has a *runtime* (runtime.py): `PodmanRuntime` runs every attempt as one sandboxed
  container of the task's image (the default of `boidctl up` and `operator run`); `HostRuntime`
  runs the command on the host, unsandboxed, for development only (and is this class's default
  only so that library callers choose explicitly). Before any slot is offered work its runtime
  passes a self-test (`slot_report()` says why a slot was refused).
- Every attempt's whole process tree ends with it: a container's PID namespace, or a host
  process group (start_new_session), so a timeout, kill() or a lost worker ends everything.
- The dispatcher passes storage paths in BOID_OUTPUT_DIR and BOID_INPUT_FILES (a JSON list);
  since storage is `file://` here, the backend rewrites them to local paths under `storage_root`
  (and the podman runtime to its mounts /boid/output and /boid/inputs). The unit sees only its own
  variables, never the operator's environment. stdout/stderr are read through pipes into
  `.stdout`/`.stderr` inside the output directory, at most `Limits.log_bytes` each (LOG_FILES: the
  dispatcher leaves them out of result hashes and amalgamation); a monitor thread enforces the
  timeout and the output directory's size limit. Over a limit, the unit fails saying which.
- A few long-lived launcher threads start attempts (spawn.py: one vfork + exec from compiled
  code, no copy of the operator, no wrapper exec'd) and one thread (`boid-local-io`) runs an epoll
  loop over every attempt's two pipes and its pidfd (the exit): no thread per task. Launching is
  the backend's hot path: threads and two exec'd wrappers per task cost ~5x the launch itself
  (bench/dispatch.py, backend alone).
- Host processes die with the operator (parent-death signal); containers carry the backend's
  scope label and their operator process (owner), and a new backend on the same storage root
  removes what a dead operator (e.g. killed with SIGKILL) left running — never a live replica's —
  so the dispatcher's `reconcile` gets LOST for them and re-queues their units.

Fault injection (for tests and demos; labelled, never on by default): `lose_contributor(name)`
kills a contributor's running tasks and reports them LOST, as if its machine vanished;
`Slot(..., corrupt_output=True)` makes a slot a cheating contributor whose outputs are altered
after its command succeeds, so replication must outvote it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import select
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from boidcluster.adapters.backend import TaskSpec, TaskUpdate

from .runtime import Launch, Limits, Prepared, Runtime, SelfTest, make_runtime, scope_of
from .spawn import Proc, exec_helper, spawn_piped

log = logging.getLogger(__name__)

LOG_FILES = frozenset({".stdout", ".stderr"})
"""Per-task log files the backend writes inside the output directory (not results)."""

CORRUPTION = b"\n# corrupted by fault injection\n"

TAIL_BYTES = 300
"""How much of a failed unit's stderr its failure message quotes."""

LAUNCHERS = 2
"""Threads that start attempts (each blocks while its child is between vfork and exec)."""

KEEP_ENDED = 4096
"""Ended tasks the backend still answers `reconcile` about (the newest). Older ones are dropped,
so its memory does not grow with the number of tasks it ran (a task's record is kilobytes: a
100,000-unit job kept ~700 MB). The dispatcher keeps a task's end itself until its result is
durable and asks the backend only about tasks it has not seen, so it never needs a dropped one."""

LINGER = 10.0
"""Seconds an ended attempt waits for its pipes' end (a background child may hold them) before it
is reported anyway and the rest of its output is dropped."""


@dataclass(frozen=True)
class Slot:
    """One place a task can run, credited to `contributor`."""

    contributor: str
    env: dict[str, str] = field(default_factory=dict)   # extra environment for this slot's tasks
    hostname: str = "localhost"
    corrupt_output: bool = False   # FAULT INJECTION: a cheating contributor (see module docstring)
    runtime: Runtime | None = field(default=None, compare=False)  # None: the backend's runtime


def slots_for(contributors: Sequence[str], per_contributor: int = 1) -> list[Slot]:
    """`per_contributor` slots for each contributor, interleaved (alice, bob, alice, bob...)."""
    return [Slot(c) for _ in range(per_contributor) for c in contributors]


@dataclass
class _Stream:
    """One log pipe of an attempt, read by the io loop into its file. The file is created at the
    first byte (a silent unit has none: two file creations cost more system time than starting
    `true` itself on ext4, ~550 us against ~150 us, measured), with O_EXCL | O_NOFOLLOW, so never
    through a link or a file the unit planted."""

    name: str             # stdout | stderr
    path: str             # .stdout | .stderr in the output directory
    log: int | None = None
    kept: int = 0
    broken: bool = False  # the log cannot be written: the rest is read and dropped


@dataclass(eq=False)
class _Task:
    spec: TaskSpec
    slot: int | None = None
    proc: Proc | None = None
    prepared: Prepared | None = None
    out: Path | None = None   # the output directory (local path)
    streams: dict[int, _Stream] = field(default_factory=dict)   # pipe read end -> stream
    exited_at: float | None = None   # the leader was reaped (the task ends when its pipes are done too)
    linger_until: float = 0.0
    limit_reason: str | None = None  # set when the attempt went over a limit (the unit fails with it)
    stderr_tail: bytes = b""         # the last bytes of stderr, kept in memory (never read back from the dir)
    timed_out: bool = False
    started_at: float | None = None
    last: TaskUpdate | None = None
    end_state: str | None = None     # set by kill()/lose_contributor() before signalling
    end_message: str = ""


def _constraint_ok(constraint: tuple[str, ...], slot: Slot) -> bool:
    fld, op, *rest = constraint
    if fld == "boid_account":
        value = slot.contributor
    elif fld == "hostname":
        value = slot.hostname
    else:
        return True
    if op == "LIKE":
        return re.fullmatch(rest[0], value) is not None
    if op == "UNLIKE":
        return re.fullmatch(rest[0], value) is None
    if op in ("IS", "CLUSTER") and rest:
        return value == rest[0]
    return True


class LocalBackend:
    """Local backend. `storage_root` is the local directory of the `file://` storage; `runtime`
    ("podman", "host" or a Runtime) runs the slots that do not name their own."""

    name = "local"

    def __init__(self, storage_root: str | os.PathLike[str], slots: Sequence[Slot | str] = ("alice", "bob"),
                 *, kill_grace: float = 2.0, runtime: Runtime | str | None = None,
                 limits: Limits | None = None) -> None:
        self.storage_root = Path(storage_root)
        self._root_str = str(self.storage_root.resolve())
        self._root_prefix = self._root_str.rstrip(os.sep) + os.sep
        self.scope = scope_of(self.storage_root)
        self.limits = limits or Limits()
        if runtime is None or isinstance(runtime, str):
            runtime = make_runtime(runtime or "host", self.limits)
        self.runtime: Runtime = runtime
        self.slots: list[Slot] = [s if isinstance(s, Slot) else Slot(s) for s in slots]
        if not self.slots:
            raise ValueError("the local backend needs at least one slot")
        self.kill_grace = kill_grace
        # Check each runtime before offering its slots work; remove what an earlier process left.
        self._selftests: list[SelfTest] = []
        self._swept: dict[str, str] = {}
        tested: dict[int, SelfTest] = {}
        for slot in self.slots:
            rt = self._runtime(slot)
            if id(rt) not in tested:
                tested[id(rt)] = rt.self_test()
                if not rt.sandboxed:
                    log.warning("local backend: %s", tested[id(rt)].message)
                elif not tested[id(rt)].ok:
                    log.error("local backend: %s", tested[id(rt)].message)
                if tested[id(rt)].ok:
                    for tid in rt.sweep(self.scope):
                        self._swept[tid] = ("its container, left running by an earlier operator process, "
                                            "was killed and removed")
            self._selftests.append(tested[id(rt)])
        self._mu = threading.RLock()
        self._tasks: dict[str, _Task] = {}
        self._queue: list[str] = []                    # task ids waiting for a slot, FIFO
        self._busy: list[str | None] = [None] * len(self.slots)
        self._offline: set[str] = set()
        self._ran: dict[tuple[str, str], set[str]] = {}  # (job, unit) -> contributors that ran it
        self._per_unit: dict[tuple[str, str], int] = {}  # (job, unit) -> its tasks in _tasks
        self._ended: collections.deque[str] = collections.deque()   # ended task ids, oldest first
        self._updates: queue.SimpleQueue[TaskUpdate] = queue.SimpleQueue()
        self._closed = False
        self._running: dict[str, _Task] = {}           # started and not yet ended (the monitor's set)
        self._parents: dict[str, str] = {}             # storage dir -> its resolved local path (_fresh_dir)
        # The io loop's state: launchers add handlers and registrations, only the loop removes them.
        self._helper = exec_helper()
        self._inbox: collections.deque[tuple[str, _Task]] = collections.deque()   # ("exit", task) without pidfd
        self._launch_q: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._launchers = [threading.Thread(target=self._launcher, name=f"boid-local-launcher-{i}", daemon=True)
                           for i in range(min(LAUNCHERS, len(self.slots)))]
        self._epoll = select.epoll()
        self._wake_r, wake_w = os.pipe()
        self._wake_w: int | None = wake_w
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._handlers: dict[int, tuple[_Task, str]] = {}   # fd -> (task, "stdout" | "stderr" | "exit")
        self._lingering: list[_Task] = []
        threading.Thread(target=self._io, name="boid-local-io", daemon=True).start()
        for th in self._launchers:
            th.start()
        threading.Thread(target=self._monitor, name="boid-local-monitor", daemon=True).start()

    # -- Backend interface ------------------------------------------------------------------
    def submit(self, task: TaskSpec) -> None:
        with self._mu:
            if self._closed:
                raise RuntimeError("local backend is closed")
            if task.task_id in self._tasks:
                return  # idempotent
            t = _Task(task)
            self._tasks[task.task_id] = t
            key = (task.job, task.unit)
            self._per_unit[key] = self._per_unit.get(key, 0) + 1
            self._queue.append(task.task_id)
            self._emit(t, "STAGING")
            self._schedule()

    def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
        out: list[TaskUpdate] = []
        try:
            out.append(self._updates.get(timeout=timeout) if timeout > 0 else self._updates.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._updates.get_nowait())
            except queue.Empty:
                return out

    def kill(self, task_id: str) -> None:
        self._end(task_id, "KILLED", "killed on request")

    def reconcile(self, task_ids: list[str]) -> None:
        with self._mu:
            for tid in task_ids:
                t = self._tasks.get(tid)
                if t is None:
                    why = self._swept.get(tid, "unknown to the local backend (it ran in an earlier operator "
                                               "process, or ended long ago)")
                    self._updates.put(TaskUpdate(tid, "LOST", message=why, finished_at=time.time()))
                elif t.last is not None:
                    self._updates.put(t.last)

    def contributors(self) -> list[str]:
        with self._mu:
            return sorted({s.contributor for i, s in enumerate(self.slots) if self._usable(i)} - self._offline)

    def capacity(self) -> int:
        """How many tasks can run at once (usable slots of online contributors); not in the Backend interface."""
        with self._mu:
            return sum(1 for i, s in enumerate(self.slots) if self._usable(i) and s.contributor not in self._offline)

    def slot_report(self) -> list[tuple[Slot, SelfTest]]:
        """Each slot with its runtime's self-test: a slot whose test failed is never offered work."""
        return list(zip(self.slots, self._selftests))

    def resolve_image(self, ref: str) -> str | None:
        """The digest the job's every attempt runs (ImageUnavailable says how to provide it);
        None when the runtime ignores images (host)."""
        digests = {self._runtime(s).resolve_image(ref) for i, s in enumerate(self.slots) if self._usable(i)}
        digests.discard(None)
        return min(digests) if digests else None

    def close(self) -> None:
        with self._mu:
            self._closed = True
            for tid in list(self._queue):
                self._tasks.pop(tid, None)
            self._queue.clear()
            running = [t for t in self._tasks.values() if t.slot is not None and t.last and not t.last.terminal]
        for t in running:
            self._end(t.spec.task_id, "KILLED", "backend closed")
        self._wake()
        for t in running:
            if t.proc is not None:
                try:
                    t.proc.wait(timeout=self.kill_grace + 5)
                except subprocess.TimeoutExpired:
                    pass
        swept: set[int] = set()
        for i, slot in enumerate(self.slots):  # nothing of ours stays behind, whatever happened above
            rt = self._runtime(slot)
            if id(rt) not in swept and self._usable(i):
                swept.add(id(rt))
                try:
                    rt.sweep(self.scope, mine=True)
                except (OSError, subprocess.SubprocessError) as e:
                    log.error("local backend: removing leftover containers failed: %s", e)

    # -- FAULT INJECTION (tests and demos only) -------------------------------------------------
    def lose_contributor(self, contributor: str, *, offline: bool = False) -> list[str]:
        """FAULT INJECTION: the contributor's machine vanishes: its running tasks are killed and
        reported LOST. With `offline`, its slots take no more work until `restore_contributor`.
        Returns the task ids lost."""
        with self._mu:
            if offline:
                self._offline.add(contributor)
            lost = [tid for i, tid in enumerate(self._busy)
                    if tid is not None and self.slots[i].contributor == contributor]
        for tid in lost:
            self._end(tid, "LOST", f"contributor {contributor} lost (fault injection)", grace=False)
        return lost

    def restore_contributor(self, contributor: str) -> None:
        with self._mu:
            self._offline.discard(contributor)
            self._schedule()

    # -- internals --------------------------------------------------------------------------
    def _emit(self, t: _Task, state: str, *, exit_code: int | None = None, message: str = "",
              finished_at: float | None = None) -> None:
        contributor = self.slots[t.slot].contributor if t.slot is not None else None
        u = TaskUpdate(t.spec.task_id, state, contributor=contributor, exit_code=exit_code,  # type: ignore[arg-type]
                       message=message, started_at=t.started_at, finished_at=finished_at)
        t.last = u
        self._updates.put(u)
        if u.terminal:   # caller holds the lock
            self._ended.append(t.spec.task_id)
            while len(self._ended) > KEEP_ENDED:
                self._drop(self._ended.popleft())

    def _drop(self, task_id: str) -> None:
        """Forget an ended task (and, with its unit's last, which contributors ran the unit)."""
        t = self._tasks.pop(task_id, None)
        if t is None:
            return
        key = (t.spec.job, t.spec.unit)
        left = self._per_unit.get(key, 1) - 1
        if left > 0:
            self._per_unit[key] = left
        else:
            self._per_unit.pop(key, None)
            self._ran.pop(key, None)

    def _runtime(self, slot: Slot) -> Runtime:
        return slot.runtime or self.runtime

    def _usable(self, i: int) -> bool:
        return self._selftests[i].ok

    def _fits(self, t: _Task, i: int) -> bool:
        slot = self.slots[i]
        if self._busy[i] is not None or slot.contributor in self._offline or not self._usable(i):
            return False
        if slot.contributor in t.spec.exclude_contributors:
            return False
        for j, other in enumerate(self._busy):  # replicas of one unit on distinct contributors
            if other is not None and self.slots[j].contributor == slot.contributor:
                o = self._tasks[other].spec
                if o.job == t.spec.job and o.unit == t.spec.unit:
                    return False
        if not all(_constraint_ok(tuple(c), slot) for c in t.spec.constraints):
            return False
        # Prefer contributors that have not run this unit yet (a fast replica may end before its
        # sibling starts); fall back to them only when no other contributor could take it.
        ran = self._ran.get((t.spec.job, t.spec.unit), set())
        if slot.contributor in ran:
            others = ({s.contributor for j, s in enumerate(self.slots) if self._usable(j)}
                      - self._offline - ran - t.spec.exclude_contributors)
            return not others
        return True

    def _schedule(self) -> None:
        """Start queued tasks (FIFO, skipping ones that fit no free slot). Caller holds the lock."""
        if self._closed or None not in self._busy:
            return
        for tid in list(self._queue):
            t = self._tasks[tid]
            slot = next((i for i in range(len(self.slots)) if self._fits(t, i)), None)
            if slot is None:
                continue
            self._queue.remove(tid)
            self._start(t, slot)
            if None not in self._busy:
                return

    def _local(self, storage_path: str) -> Path:
        """The local path of a storage path, every link resolved; never outside the storage root."""
        return Path(self._resolve(storage_path.lstrip("/")))

    def _resolve(self, rel: str) -> str:
        root = self._root_str
        p = os.path.realpath(os.path.join(root, rel))   # strings: a hot path
        if p != root and not p.startswith(self._root_prefix):
            raise ValueError(f"storage path {rel!r} leaves the storage root")
        return p

    def _fresh_dir(self, storage_path: str) -> tuple[str, bool]:
        """(local path, made now) of an attempt's output directory, created if missing.

        Why: this is on every launch, and resolving every component costs a system call each.
        The parent (one per job) is resolved once and remembered; the directory itself is made
        with mkdir, which never follows a link at its last component, so a directory made now is
        the resolved path. One that already existed (a retried launch) is resolved in full."""
        rel = storage_path.lstrip("/")
        head, _, name = rel.rpartition("/")
        parent = self._parents.get(head)
        if parent is None or name in ("", ".", ".."):
            parent = self._resolve(head)
            if name in ("", ".", ".."):
                p = self._resolve(rel)
                os.makedirs(p, exist_ok=True)
                return p, False
        p = f"{parent}/{name}"
        try:
            os.mkdir(p)
        except FileNotFoundError:
            os.makedirs(parent, exist_ok=True)
            parent = self._resolve(head)   # made now: resolved again, as it is
            p = f"{parent}/{name}"
            try:
                os.mkdir(p)
            except FileExistsError:
                return self._existing(rel), False
        except FileExistsError:
            return self._existing(rel), False
        if len(self._parents) >= 4096:   # bounded: a job's parent is looked up once per launch
            self._parents.clear()
        self._parents[head] = parent
        return p, True

    def _existing(self, rel: str) -> str:
        p = self._resolve(rel)
        if not os.path.isdir(p):
            raise ValueError(f"storage path {rel!r} is not a directory")
        return p

    def _start(self, t: _Task, slot_index: int) -> None:
        """Claim the slot (caller holds the lock); the io thread starts the process."""
        spec, slot = t.spec, self.slots[slot_index]
        t.slot = slot_index
        self._busy[slot_index] = spec.task_id
        self._ran.setdefault((spec.job, spec.unit), set()).add(slot.contributor)
        t.started_at = time.time()
        self._launch_q.put(t)

    def _wake(self) -> None:
        with self._mu:   # never a write to a closed (maybe reused) descriptor
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:
                    pass  # already awake

    # -- the io thread -----------------------------------------------------------------------
    def _io(self) -> None:
        """Start attempts, copy their output, reap them. Every child is started from this one
        long-lived thread: Linux delivers the parent-death signal when the *thread* that forked the
        child exits, so short-lived threads must not (it ends after close(), when nothing runs)."""
        while True:
            try:
                timeout = min((t.linger_until for t in self._lingering), default=None)
                events = self._epoll.poll(-1 if timeout is None else max(0.0, timeout - time.monotonic()) + 0.01)
                for fd, _ in events:
                    if fd == self._wake_r:
                        while True:
                            try:
                                if not os.read(fd, 4096):
                                    break
                            except BlockingIOError:
                                break
                        continue
                    handler = self._handlers.get(fd)
                    if handler is None:
                        continue
                    t, what = handler
                    if what == "exit":
                        self._forget(fd)
                        self._exited(t)
                    else:
                        self._read(t, fd)
                while self._inbox:
                    _, t = self._inbox.popleft()
                    self._exited(t)
                now = time.monotonic()
                for t in [t for t in self._lingering if t.linger_until <= now]:
                    for fd in list(t.streams):   # a background child still holds the pipe: drop the rest
                        self._close_stream(t, fd)
                    self._finish(t)
                with self._mu:
                    done = self._closed and all(b is None for b in self._busy)
                    if done and not (self._handlers or self._inbox or self._lingering or self._running):
                        self._epoll.close()
                        os.close(self._wake_r)
                        os.close(self._wake_w)
                        self._wake_w = None
                        for _ in self._launchers:   # they end last: their children's parent-death signal
                            self._launch_q.put(None)
                        return
            except Exception:  # never let the loop die: every running task depends on it
                log.exception("local backend io loop")
                time.sleep(0.1)

    def _launcher(self) -> None:
        """Start queued attempts. Long-lived: Linux delivers the parent-death signal when the *thread*
        that forked the child exits, so attempts are never started from short-lived threads."""
        while (t := self._launch_q.get()) is not None:
            try:
                self._launch(t)
            except Exception as e:  # never let a launcher die; the task ends, its slot comes free
                log.exception("local backend: starting %s", t.spec.task_id)
                with self._mu:
                    if t.proc is None and t.slot is not None and self._busy[t.slot] == t.spec.task_id:
                        self._busy[t.slot] = None
                        self._emit(t, "FAILED", message=f"the local backend could not start it: {e}",
                                   finished_at=time.time())
                        self._schedule()

    def _forget(self, fd: int) -> None:
        """Stop watching `fd` and close it (the io loop's own descriptors only)."""
        del self._handlers[fd]
        if self._helper is not None:
            self._helper.epoll_close(self._epoll.fileno(), fd)
        else:
            self._epoll.unregister(fd)
            os.close(fd)

    def _launch(self, t: _Task) -> None:
        assert t.slot is not None
        spec, slot = t.spec, self.slots[t.slot]
        runtime = self._runtime(slot)
        with self._mu:
            if self._closed or t.end_state is not None:  # ended before it could start
                self._busy[t.slot] = None
                self._emit(t, t.end_state or "KILLED", message=t.end_message or "backend closed",
                           finished_at=time.time())
                self._schedule()  # the slot is free again: a queued task may take it
                return
        try:
            out_s, fresh = self._fresh_dir(spec.output_dir)
            out = Path(out_s)
            listed = spec.env.get("BOID_INPUT_FILES")
            inputs = [self._local(p) for p in json.loads(listed)] if listed and listed != "[]" else []
            env = {**spec.env, **slot.env, "BOID_CONTRIBUTOR": slot.contributor, "BOID_TASK_ID": spec.task_id}
            env.pop("BOID_OUTPUT_DIR", None)   # the runtime's own, as the unit sees it
            env.pop("BOID_INPUT_FILES", None)
            attempt = spec.task_id.rsplit(".", 1)[-1]
            prepared = runtime.prepare(Launch(
                task_id=spec.task_id, job=spec.job, unit=spec.unit, attempt=attempt, contributor=slot.contributor,
                command=list(spec.command), env=env, image=spec.image, resources=spec.resources,
                network=spec.network, output=out, inputs=inputs, timeout=spec.timeout, scope=self.scope))
            for name in () if fresh else LOG_FILES:   # an earlier attempt's (unlink never follows a link)
                try:
                    os.unlink(out / name)
                except FileNotFoundError:
                    pass
            proc, r_out, r_err, pidfd = spawn_piped(prepared.argv, prepared.env, cwd=prepared.cwd,
                                                    fsize=prepared.fsize, helper=self._helper)
        except (OSError, ValueError) as e:
            with self._mu:
                self._busy[t.slot] = None
                self._emit(t, "FAILED", message=f"could not start {spec.command[:1]} ({runtime.name} runtime): {e}",
                           finished_at=time.time())
                self._schedule()
            return
        t.out = out
        t.streams = {r_out: _Stream("stdout", f"{out_s}/.stdout"), r_err: _Stream("stderr", f"{out_s}/.stderr")}
        with self._mu:
            t.prepared, t.proc = prepared, proc
            self._running[spec.task_id] = t
            if t.end_state is None:
                self._emit(t, "RUNNING")
        if t.end_state is not None:  # killed or lost before it started
            self._signal(t, signal.SIGKILL)
        self._watch(t, pidfd)

    def _watch(self, t: _Task, pidfd: int | None) -> None:
        """Hand a started attempt to the io loop: its pipes, and its exit through its pidfd. Called
        by the launcher: epoll registration is thread-safe, and every handler is in place before
        any descriptor is registered (the loop only ever looks up and removes its own)."""
        assert t.proc is not None
        fds = list(t.streams)
        for fd, stream in t.streams.items():
            self._handlers[fd] = (t, stream.name)
        if pidfd is None:   # a kernel before 5.3: a thread waits (without reaping) and tells the loop
            threading.Thread(target=self._await_exit, args=(t,), name=f"boid-local-{t.spec.task_id}",
                             daemon=True).start()
        else:
            self._handlers[pidfd] = (t, "exit")
            fds.append(pidfd)
        if self._helper is not None:
            self._helper.epoll_add(self._epoll.fileno(), fds)
        else:
            for fd in fds:
                self._epoll.register(fd, select.EPOLLIN)

    def _await_exit(self, t: _Task) -> None:
        assert t.proc is not None
        try:
            os.waitid(os.P_PID, t.proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        self._inbox.append(("exit", t))
        self._wake()

    def _read(self, t: _Task, fd: int) -> None:
        """Copy what one log pipe holds into its file, keeping at most `limits.log_bytes`; past that
        the unit fails (killed) and the rest is read and dropped so the writer never blocks."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            log.error("local backend: log of %s: %s", t.spec.task_id, e)
            chunk = b""
        if not chunk:
            self._close_stream(t, fd)
            if t.exited_at is not None and not t.streams:
                self._finish(t)
            return
        s = t.streams[fd]
        room = self.limits.log_bytes - s.kept
        if room > 0:
            keep = chunk[:room]
            s.kept += len(keep)
            if s.name == "stderr":
                t.stderr_tail = (t.stderr_tail + keep)[-TAIL_BYTES:]
            if s.log is None and not s.broken:
                s.log = self._open_log(t, s)
            if s.log is not None:
                try:
                    view = memoryview(keep)
                    while view:
                        view = view[os.write(s.log, view):]
                except OSError as e:   # e.g. a full disk: keep draining the pipe, drop the rest
                    log.error("local backend: log of %s: %s", t.spec.task_id, e)
                    os.close(s.log)
                    s.log, s.broken = None, True
        if len(chunk) > room:
            self._over_limit(t, f"{s.name} exceeded the log limit of {self.limits.log_bytes} bytes")

    @staticmethod
    def _open_log(t: _Task, s: _Stream) -> int | None:
        """Create the log file; whatever the unit put at its name is removed, never written through."""
        for _ in range(2):
            try:
                return os.open(s.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                try:
                    os.unlink(s.path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.error("local backend: %s of %s cannot be created: %s", s.name, t.spec.task_id, e)
                    break
            except OSError as e:
                log.error("local backend: %s of %s cannot be created: %s", s.name, t.spec.task_id, e)
                break
        s.broken = True
        return None

    def _close_stream(self, t: _Task, fd: int) -> None:
        s = t.streams.pop(fd)
        self._forget(fd)
        if s.log is not None:
            os.close(s.log)
            s.log = None

    def _exited(self, t: _Task) -> None:
        assert t.proc is not None
        if t.proc.reap() is None:   # not yet (a spurious wakeup): the fallback waiter never says so early
            log.error("local backend: %s signalled its end but was not reaped; waiting again", t.spec.task_id)
            threading.Thread(target=self._await_exit, args=(t,), daemon=True).start()
            return
        t.exited_at = time.monotonic()
        if not t.streams:
            self._finish(t)
        else:
            t.linger_until = t.exited_at + LINGER
            self._lingering.append(t)

    def _over_limit(self, t: _Task, reason: str) -> None:
        with self._mu:
            if t.limit_reason is not None or t.end_state is not None:
                return
            t.limit_reason = reason
        self._signal(t, signal.SIGKILL)

    def _monitor(self) -> None:
        """Every half second: kill attempts past their timeout or over the output size limit."""
        while not self._closed:
            time.sleep(0.5)
            try:
                with self._mu:
                    running = [t for t in self._running.values()
                               if t.proc is not None and t.proc.returncode is None and t.end_state is None]
                now = time.time()
                for t in running:
                    if t.spec.timeout and t.started_at and now - t.started_at > t.spec.timeout and not t.timed_out:
                        t.timed_out = True
                        self._signal(t, signal.SIGKILL)
                    elif t.limit_reason is None:
                        size, count, _unsafe = self._scan_output(t)
                        if self._output_over(size, count):
                            self._over_limit(t, self._output_over(size, count))  # type: ignore[arg-type]
            except Exception:  # never let the monitor die
                log.exception("local backend monitor")

    def _scan_output(self, t: _Task) -> tuple[int, int, str | None]:
        """(total bytes, entries, why the outputs are unsafe to read or None). Nothing is followed: a symlink,
        fifo or socket the unit left would make the operator read a host file or block on it."""
        try:
            out = t.out or self._local(t.spec.output_dir)
        except ValueError:
            return 0, 0, None
        total, bad, count = 0, None, 0
        todo = [str(out)]
        while todo:   # os.scandir, not os.walk: every attempt's end is scanned (a silent one: one call)
            try:
                entries = os.scandir(todo.pop())
            except OSError:
                continue
            with entries:
                for e in entries:
                    count += 1
                    if count > self.limits.output_files:  # stop early: the count alone fails the unit
                        return total, count, bad
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
                    elif stat.S_ISDIR(st.st_mode):
                        todo.append(e.path)
                    elif bad is None:
                        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                        bad = (f"outputs may hold only regular files and directories: "
                               f"{os.path.relpath(e.path, out)} is {kind}")
        return total, count, bad

    def _output_over(self, size: int, count: int) -> str | None:
        if size > self.limits.output_bytes:
            return f"its outputs exceeded the output limit of {self.limits.output_bytes} bytes"
        if count > self.limits.output_files:
            return f"its outputs exceeded the limit of {self.limits.output_files} files and directories"
        return None

    def _finish(self, t: _Task) -> None:
        """The attempt's leader was reaped and its pipes are done (or lingered too long): report its end."""
        assert t.proc is not None and t.proc.returncode is not None and t.slot is not None
        if t in self._lingering:
            self._lingering.remove(t)
        code = t.proc.returncode
        finished = time.time()
        runtime = self._runtime(self.slots[t.slot])
        try:
            reason = runtime.exit_reason(t.prepared, code) if t.prepared is not None else None
            size, count, unsafe = self._scan_output(t)
        except Exception as e:  # the end is reported whatever happens: the slot must come free
            log.exception("local backend: checking the end of %s", t.spec.task_id)
            reason, size, count, unsafe = None, 0, 0, f"the backend could not check its outputs: {e}"
        if t.limit_reason is None and t.end_state is None:
            t.limit_reason = self._output_over(size, count)
        with self._mu:
            slot = self.slots[t.slot]
            if t.end_state is not None:
                state, msg = t.end_state, t.end_message
            elif t.limit_reason is not None:
                state, msg = "FAILED", f"limit exceeded: {t.limit_reason}; killed"
            elif t.timed_out:
                state, msg = "FAILED", f"timed out after {t.spec.timeout:g}s: killed"
            elif unsafe is not None:
                state, msg = "FAILED", unsafe
            elif code == 0:
                state, msg = "FINISHED", ""
                if slot.corrupt_output:
                    self._corrupt(t.out or self._local(t.spec.output_dir))
            else:
                if reason == "OOMKilled":
                    msg = (f"OOMKilled: the unit went over its memory limit of {t.spec.resources.mem} MiB "
                           f"and the kernel killed it (exit code {code})")
                else:
                    msg = (f"{reason}: " if reason else "") + f"exited with code {code}" + self._tail(t)
                state = "FAILED"
            self._running.pop(t.spec.task_id, None)
            self._busy[t.slot] = None
            self._emit(t, state, exit_code=code, message=msg, finished_at=finished)
            self._schedule()

    @staticmethod
    def _tail(t: _Task) -> str:
        """The last TAIL_BYTES of stderr, as the log pump kept them (the file is never read back)."""
        data = t.stderr_tail.decode(errors="replace").strip()
        return f": {data}" if data else ""

    @staticmethod
    def _corrupt(out: Path) -> None:
        """FAULT INJECTION: alter every output file of a cheating slot."""
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.name not in LOG_FILES:
                with open(p, "ab") as f:
                    f.write(CORRUPTION)

    def _signal(self, t: _Task, sig: int) -> None:
        if t.proc is None or t.prepared is None or t.proc.returncode is not None or t.slot is None:
            return
        self._runtime(self.slots[t.slot]).kill(t.prepared, t.proc, sig)

    def _end(self, task_id: str, state: str, message: str, *, grace: bool = True) -> None:
        with self._mu:
            t = self._tasks.get(task_id)
            if t is None or (t.last is not None and t.last.terminal):
                return
            if task_id in self._queue:  # never started
                self._queue.remove(task_id)
                self._emit(t, state, message=message, finished_at=time.time())
                return
            if t.end_state is None:
                t.end_state, t.end_message = state, message
        if not grace or self.kill_grace <= 0:
            self._signal(t, signal.SIGKILL)
            return
        self._signal(t, signal.SIGTERM)
        timer = threading.Timer(self.kill_grace, self._signal, args=(t, signal.SIGKILL))
        timer.daemon = True
        timer.start()
