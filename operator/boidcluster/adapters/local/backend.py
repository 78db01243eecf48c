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

import json
import logging
import os
import queue
import re
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

log = logging.getLogger(__name__)

LOG_FILES = frozenset({".stdout", ".stderr"})
"""Per-task log files the backend writes inside the output directory (not results)."""

CORRUPTION = b"\n# corrupted by fault injection\n"

TAIL_BYTES = 300
"""How much of a failed unit's stderr its failure message quotes."""


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
class _Task:
    spec: TaskSpec
    slot: int | None = None
    proc: subprocess.Popen | None = None
    prepared: Prepared | None = None
    readers: list[threading.Thread] = field(default_factory=list)
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
        self._updates: queue.Queue[TaskUpdate] = queue.Queue()
        self._closed = False
        self._launches: queue.Queue[_Task | None] = queue.Queue()
        threading.Thread(target=self._launcher, name="boid-local-launcher", daemon=True).start()
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
                    why = self._swept.get(tid, "unknown to the local backend (it ran in an earlier operator process)")
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
        self._launches.put(None)
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
        p = (self.storage_root / storage_path.lstrip("/")).resolve()
        root = self.storage_root.resolve()
        if p != root and root not in p.parents:
            raise ValueError(f"storage path {storage_path!r} leaves the storage root")
        return p

    def _start(self, t: _Task, slot_index: int) -> None:
        """Claim the slot (caller holds the lock); the launcher thread starts the process."""
        spec, slot = t.spec, self.slots[slot_index]
        t.slot = slot_index
        self._busy[slot_index] = spec.task_id
        self._ran.setdefault((spec.job, spec.unit), set()).add(slot.contributor)
        t.started_at = time.time()
        self._launches.put(t)

    def _launcher(self) -> None:
        # Every child is started from this one long-lived thread: Linux delivers the parent-death
        # signal when the *thread* that forked the child exits, so short-lived threads must not.
        while True:
            t = self._launches.get()
            if t is None:
                return
            self._launch(t)

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
            out = self._local(spec.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            inputs = [self._local(p) for p in json.loads(spec.env.get("BOID_INPUT_FILES") or "[]")]
            env = {k: v for k, v in {**spec.env, **slot.env}.items() if k not in ("BOID_OUTPUT_DIR", "BOID_INPUT_FILES")}
            env.update(BOID_CONTRIBUTOR=slot.contributor, BOID_TASK_ID=spec.task_id)
            attempt = spec.task_id.rsplit(".", 1)[-1]
            prepared = runtime.prepare(Launch(
                task_id=spec.task_id, job=spec.job, unit=spec.unit, attempt=attempt, contributor=slot.contributor,
                command=list(spec.command), env=env, image=spec.image, resources=spec.resources,
                network=spec.network, output=out, inputs=inputs, timeout=spec.timeout, scope=self.scope))
            # The logs are opened before the unit runs, never through a link it could plant.
            logs = [os.fdopen(os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644), "wb")
                    for name in (".stdout", ".stderr")]
            try:
                proc = subprocess.Popen(prepared.argv, env=prepared.env, cwd=prepared.cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            except OSError:
                for f in logs:
                    f.close()
                raise
        except (OSError, ValueError) as e:
            with self._mu:
                self._busy[t.slot] = None
                self._emit(t, "FAILED", message=f"could not start {spec.command[:1]} ({runtime.name} runtime): {e}",
                           finished_at=time.time())
                self._schedule()
            return
        with self._mu:
            t.prepared, t.proc = prepared, proc
            if t.end_state is None:
                self._emit(t, "RUNNING")
        for stream, f, name in ((proc.stdout, logs[0], "stdout"), (proc.stderr, logs[1], "stderr")):
            th = threading.Thread(target=self._pump, args=(t, stream, f, name), daemon=True,
                                  name=f"boid-log-{spec.task_id}.{name}")
            th.start()
            t.readers.append(th)
        if t.end_state is not None:  # killed or lost before it started
            self._signal(t, signal.SIGKILL)
        threading.Thread(target=self._wait, args=(t, out), name=f"boid-local-{spec.task_id}",
                         daemon=True).start()

    def _pump(self, t: _Task, stream, f, name: str) -> None:
        """Copy one log stream into its file, keeping at most `limits.log_bytes`; past that the unit
        fails (killed) and the rest is read and dropped so the writer never blocks."""
        limit, kept = self.limits.log_bytes, 0
        fd = stream.fileno()
        try:
            with f:
                while chunk := os.read(fd, 1 << 16):
                    room = limit - kept
                    if room > 0:
                        f.write(chunk[:room])
                        kept += min(room, len(chunk))
                        if name == "stderr":
                            t.stderr_tail = (t.stderr_tail + chunk[:room])[-TAIL_BYTES:]
                    if len(chunk) > room:
                        self._over_limit(t, f"{name} exceeded the log limit of {limit} bytes")
        except OSError as e:
            log.error("local backend: log of %s: %s", t.spec.task_id, e)
        finally:
            stream.close()

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
                    running = [t for t in self._tasks.values()
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
            out = self._local(t.spec.output_dir)
        except ValueError:
            return 0, 0, None
        total, bad, count = 0, None, 0
        for root, dirs, files in os.walk(out):
            count += len(files) + len(dirs)
            if count > self.limits.output_files:  # stop early: the count alone fails the unit
                return total, count, bad
            for name in [*files, *dirs]:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                elif not stat.S_ISDIR(st.st_mode) and bad is None:
                    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                    bad = f"outputs may hold only regular files and directories: {os.path.relpath(path, out)} is {kind}"
        return total, count, bad

    def _output_over(self, size: int, count: int) -> str | None:
        if size > self.limits.output_bytes:
            return f"its outputs exceeded the output limit of {self.limits.output_bytes} bytes"
        if count > self.limits.output_files:
            return f"its outputs exceeded the limit of {self.limits.output_files} files and directories"
        return None

    def _wait(self, t: _Task, out: Path) -> None:
        assert t.proc is not None and t.slot is not None
        code = t.proc.wait()
        for th in t.readers:
            th.join(timeout=10)
        finished = time.time()
        runtime = self._runtime(self.slots[t.slot])
        reason = runtime.exit_reason(t.prepared, code) if t.prepared is not None else None
        size, count, unsafe = self._scan_output(t)
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
                    self._corrupt(out)
            else:
                if reason == "OOMKilled":
                    msg = (f"OOMKilled: the unit went over its memory limit of {t.spec.resources.mem} MiB "
                           f"and the kernel killed it (exit code {code})")
                else:
                    msg = (f"{reason}: " if reason else "") + f"exited with code {code}" + self._tail(t)
                state = "FAILED"
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
