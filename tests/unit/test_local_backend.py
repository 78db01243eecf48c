"""The local backend with real subprocesses: env, logs, exclusions, timeout, kill, reconcile, faults."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from boidcluster.adapters.backend import Backend, TaskSpec
from boidcluster.adapters.local.backend import TAIL_BYTES, LocalBackend, Slot
from boidcluster.adapters.local.runtime import Limits


def collect(backend, until, timeout=10.0):
    """Updates until `until(update)` holds for one; returns them all."""
    got = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for u in backend.updates(timeout=0.1):
            got.append(u)
            if until(u):
                return got
    raise AssertionError(f"no matching update within {timeout}s: {got}")


def task(tid, command, unit="u0", **kw):
    env = {"BOID_UNIT_INDEX": "0", "BOID_UNIT_PARAMS": '{"seed": 1}', "BOID_OUTPUT_DIR": f"out/{tid}",
           "BOID_INPUT_FILES": json.dumps(kw.pop("inputs", []))}
    return TaskSpec(task_id=tid, job="j", unit=unit, command=command, env=env, output_dir=f"out/{tid}", **kw)


@pytest.fixture(params=["compiled", "fallback"])
def backend(tmp_path, request):
    """Both ways of starting an attempt: the compiled spawner, and setpriv + prlimit without a compiler."""
    b = LocalBackend(tmp_path, [Slot("alice"), Slot("bob")], kill_grace=0.5)
    if request.param == "fallback":
        b._helper = None
    else:
        assert b._helper is not None, "the compiled spawner could not be built here (see the log)"
    yield b
    b.close()


def test_is_a_backend_and_runs_with_the_unit_env(backend, tmp_path):
    assert isinstance(backend, Backend)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("A")
    script = ("import json,os;d=os.environ['BOID_OUTPUT_DIR'];"
              "open(os.path.join(d,'r.json'),'w').write(json.dumps({k:os.environ[k] for k in "
              "['BOID_UNIT_INDEX','BOID_UNIT_PARAMS','BOID_INPUT_FILES']}));print('hello')")
    backend.submit(task("t1", [sys.executable, "-c", script], inputs=["in/a.txt"]))
    ups = collect(backend, lambda u: u.terminal)
    assert [u.state for u in ups] == ["STAGING", "RUNNING", "FINISHED"]
    done = ups[-1]
    assert done.contributor in ("alice", "bob") and done.exit_code == 0
    assert done.started_at <= done.finished_at and done.contributed_us > 0
    out = json.loads((tmp_path / "out/t1/r.json").read_text())
    assert out["BOID_UNIT_PARAMS"] == '{"seed": 1}'
    assert json.loads(out["BOID_INPUT_FILES"]) == [str(tmp_path / "in" / "a.txt")]
    assert (tmp_path / "out/t1/.stdout").read_text() == "hello\n"


def test_failure_reports_exit_code_and_stderr(backend):
    backend.submit(task("t1", ["sh", "-c", "echo boom >&2; exit 3"]))
    done = collect(backend, lambda u: u.terminal)[-1]
    assert done.state == "FAILED" and done.exit_code == 3 and "boom" in done.message


def test_exclusions_and_distinct_contributors_per_unit(backend):
    backend.submit(task("t1", ["sleep", "0.3"], exclude_contributors=frozenset({"alice"})))
    backend.submit(task("t2", ["sleep", "0.3"]))  # same unit: must not share bob
    ups = collect(backend, lambda u: u.task_id == "t2" and u.terminal)
    by = {u.task_id: u.contributor for u in ups if u.state == "FINISHED"}
    assert by.get("t1", "bob") == "bob" and by["t2"] == "alice"


def test_slots_limit_concurrency_and_queue(tmp_path):
    b = LocalBackend(tmp_path, ["alice"])
    try:
        for i in range(3):
            b.submit(task(f"t{i}", ["sleep", "0.1"], unit=f"u{i}"))
        ups = collect(b, lambda u: u.task_id == "t2" and u.terminal)
        running = 0
        for u in ups:
            running += {"RUNNING": 1}.get(u.state, 0) - (1 if u.terminal else 0)
            assert running <= 1
    finally:
        b.close()


def test_timeout_kills_the_process_group(backend, tmp_path):
    backend.submit(task("t1", ["sh", "-c", "sleep 30 & echo $! > child; wait"], timeout=0.5))
    done = collect(backend, lambda u: u.terminal)[-1]
    assert done.state == "FAILED" and "timed out" in done.message
    child = int((tmp_path / "out/t1/child").read_text())
    time.sleep(0.1)
    try:  # gone, or a zombie waiting for init to reap it
        assert open(f"/proc/{child}/stat").read().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        pass


def test_kill_and_reconcile(backend):
    backend.submit(task("t1", ["sleep", "30"]))
    collect(backend, lambda u: u.state == "RUNNING")
    backend.reconcile(["t1", "ghost"])
    ups = collect(backend, lambda u: u.task_id == "ghost")
    assert [(u.task_id, u.state) for u in ups] == [("t1", "RUNNING"), ("ghost", "LOST")]
    backend.kill("t1")
    assert collect(backend, lambda u: u.terminal)[-1].state == "KILLED"
    backend.kill("t1")  # idempotent
    assert backend.updates(timeout=0.2) == []


def test_fault_injection_lose_contributor_and_cheat(tmp_path):
    b = LocalBackend(tmp_path, [Slot("alice"), Slot("mallory", corrupt_output=True)])
    try:
        b.submit(task("t1", ["sleep", "30"], exclude_contributors=frozenset({"mallory"})))
        collect(b, lambda u: u.state == "RUNNING")
        assert b.lose_contributor("alice") == ["t1"]
        lost = collect(b, lambda u: u.terminal)[-1]
        assert lost.state == "LOST" and lost.contributor == "alice"
        b.submit(task("t2", ["sh", "-c", 'echo 42 > "$BOID_OUTPUT_DIR/r"'], unit="u2",
                      exclude_contributors=frozenset({"alice"})))
        assert collect(b, lambda u: u.terminal)[-1].state == "FINISHED"
        assert (tmp_path / "out/t2/r").read_bytes().startswith(b"42\n\n# corrupted")
    finally:
        b.close()


def test_task_submitted_from_a_short_lived_thread_survives_the_thread(backend):
    """The parent-death signal follows the forking *thread*: tasks must outlive their submitter."""
    import threading
    th = threading.Thread(target=backend.submit, args=(task("t1", ["sh", "-c", "sleep 0.3"]),))
    th.start()
    th.join()
    assert collect(backend, lambda u: u.terminal)[-1].state == "FINISHED"


def test_close_kills_running_and_drops_queued(tmp_path):
    b = LocalBackend(tmp_path, ["alice"], kill_grace=0.2)
    b.submit(task("t1", ["sleep", "30"]))
    b.submit(task("t2", ["sleep", "30"], unit="u2"))
    collect(b, lambda u: u.state == "RUNNING")
    t0 = time.monotonic()
    b.close()
    assert time.monotonic() - t0 < 3
    assert [u.state for u in b.updates(timeout=0.5) if u.terminal] == ["KILLED"]


# -- the host runtime's bounds (the container runtime's are in tests/integration/test_containers.py) --
def test_host_runtime_never_passes_the_operators_environment_to_a_unit(tmp_path, monkeypatch):
    monkeypatch.setenv("BOID_CHAIN_KEYS", "5Ksecret-key-material")
    monkeypatch.setenv("BOID_ZK", "127.0.0.1:2181")
    b = LocalBackend(tmp_path, ["alice"], runtime="host")
    try:
        b.submit(task("t1", ["sh", "-c", 'env > "$BOID_OUTPUT_DIR/env"']))
        assert collect(b, lambda u: u.terminal)[-1].state == "FINISHED"
    finally:
        b.close()
    seen = (tmp_path / "out/t1/env").read_text()
    assert "BOID_CHAIN_KEYS" not in seen and "5Ksecret" not in seen and "BOID_ZK" not in seen
    assert "BOID_UNIT_PARAMS=" in seen and "BOID_CONTRIBUTOR=alice" in seen


def test_logs_are_capped_and_the_unit_fails_saying_so(tmp_path):
    b = LocalBackend(tmp_path, ["alice"], runtime="host", limits=Limits(log_bytes=100_000))
    try:
        b.submit(task("t1", ["sh", "-c", "yes boid >&2"]))
        done = collect(b, lambda u: u.terminal)[-1]
    finally:
        b.close()
    assert done.state == "FAILED" and "stderr exceeded the log limit of 100000 bytes" in done.message
    assert (tmp_path / "out/t1/.stderr").stat().st_size == 100_000


def test_failure_message_quotes_the_stderr_tail_without_reading_the_log_back(tmp_path, monkeypatch):
    """The operator never reads a log file back (it could be huge, or a link the unit planted): the
    message quotes the last TAIL_BYTES the log pump kept in memory."""
    import builtins
    import io

    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def spy(real):
        def wrapped(path, mode="r", *a, **kw):
            if str(path).endswith(".stderr") and "r" in mode:
                opened.append(str(path))
            return real(path, mode, *a, **kw)
        return wrapped

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    b = LocalBackend(tmp_path, ["alice"], runtime="host")
    try:
        b.submit(task("t1", ["sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' a >&2; echo LAST >&2; exit 4"]))
        done = collect(b, lambda u: u.terminal)[-1]
    finally:
        b.close()
    assert done.state == "FAILED" and done.message.endswith("aaaaLAST")
    assert len(done.message) <= len("exited with code 4: ") + TAIL_BYTES
    assert opened == []
    assert (tmp_path / "out/t1/.stderr").stat().st_size == 2_000_005


# -- invariants under random sequences (host runtime: real processes, fast) -------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OPS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["true", "false", "sleep 0.1", "sleep 1"]),
              st.integers(0, 3), st.sets(st.sampled_from(["alice", "bob"]), max_size=1)),
    st.tuples(st.just("kill"), st.integers(0, 20)),
    st.tuples(st.just("lose"), st.sampled_from(["alice", "bob"])),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.05])),
), min_size=1, max_size=8)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_every_task_ends_exactly_once_and_a_slot_runs_one_task_at_a_time(tmp_path_factory, ops):
    """Whatever the order of submits, kills and lost contributors: every submitted task gets exactly
    one terminal update, nothing runs after it ended, and a contributor's slot never runs two tasks."""
    root = tmp_path_factory.mktemp("inv")
    b = LocalBackend(root, ["alice", "bob"], runtime="host", kill_grace=0.1, limits=Limits(log_bytes=4096))
    submitted: list[str] = []
    got = []
    try:
        for op in ops:
            if op[0] == "submit":
                tid = f"t{len(submitted)}"
                _, cmd, unit, excl = op
                b.submit(task(tid, ["sh", "-c", cmd], unit=f"u{unit}", exclude_contributors=frozenset(excl),
                              timeout=0.3))
                submitted.append(tid)
            elif op[0] == "kill" and submitted:
                b.kill(submitted[op[1] % len(submitted)])
            elif op[0] == "lose":
                b.lose_contributor(op[1])
            elif op[1]:
                time.sleep(op[1])
        end = time.monotonic() + 20
        while time.monotonic() < end:
            got += b.updates(timeout=0.1)
            if {u.task_id for u in got if u.terminal} >= set(submitted):
                break
        assert {u.task_id for u in got if u.terminal} >= set(submitted), "a task never ended (before close)"
    finally:
        b.close()
    got += b.updates(timeout=0.2)
    terminal = [u.task_id for u in got if u.terminal]
    assert sorted(terminal) == sorted(submitted), got
    ended: set[str] = set()
    running: dict[str, str] = {}   # contributor -> task
    for u in got:
        assert u.task_id not in ended, f"update after the end: {u}"
        if u.state == "RUNNING":
            assert u.contributor not in running, f"{u.contributor} runs {running.get(u.contributor)} and {u.task_id}"
            running[u.contributor] = u.task_id
        if u.terminal:
            ended.add(u.task_id)
            if u.contributor and running.get(u.contributor) == u.task_id:
                del running[u.contributor]


def test_a_task_killed_before_it_started_frees_its_slot_for_a_queued_one(tmp_path):
    """A kill that lands between a task claiming a slot and its process starting frees the slot
    and starts the next queued task that only that slot can take (found by the invariant above)."""
    b = LocalBackend(tmp_path, ["alice", "bob"], runtime="host", kill_grace=0.1, limits=Limits(log_bytes=4096))
    try:
        b.submit(task("t0", ["sh", "-c", "true"], unit="u0", timeout=5))
        b.submit(task("t1", ["sh", "-c", "true"], unit="u1", exclude_contributors=frozenset({"bob"}), timeout=5))
        b.kill("t0")
        got, end = [], time.monotonic() + 10
        while time.monotonic() < end and not {u.task_id for u in got if u.terminal} >= {"t0", "t1"}:
            got += b.updates(timeout=0.1)
        ends = {u.task_id: u.state for u in got if u.terminal}
        assert ends.get("t0") == "KILLED" and ends.get("t1") == "FINISHED", got
    finally:
        b.close()


# -- how an attempt is started: the bounds a host process gets (both spawners) -----------------------
PROBE = """
import ctypes, json, os, resource, signal
libc = ctypes.CDLL(None, use_errno=True)
pdeathsig = ctypes.c_int(-1)
libc.prctl(2, ctypes.byref(pdeathsig), 0, 0, 0)   # PR_GET_PDEATHSIG
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
print(json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "pgrp": os.getpgrp(), "cwd": os.getcwd(),
                  "fsize": resource.getrlimit(resource.RLIMIT_FSIZE), "pdeathsig": pdeathsig.value,
                  "stdin": os.readlink("/proc/self/fd/0"), "fds": fds}))
"""
# Python ignores SIGPIPE itself at start: the signal state is read by `cat`, exec'd before it
PROBE_CMD = ["sh", "-c", 'cat /proc/self/status > "$BOID_OUTPUT_DIR/status"; exec "$0" -c "$1"', sys.executable, PROBE]


def test_an_attempt_gets_its_own_session_pdeathsig_fsize_devnull_and_no_operator_descriptors(backend, tmp_path):
    leak = os.open(tmp_path / "operator-file", os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(leak, True)   # even a descriptor the operator made inheritable stays with it
    try:
        backend.submit(task("t1", PROBE_CMD))
        done = collect(backend, lambda u: u.terminal)[-1]
    finally:
        os.close(leak)
    assert done.state == "FINISHED", done
    seen = json.loads((tmp_path / "out/t1/.stdout").read_text())
    assert seen["sid"] == seen["pgrp"] == seen["pid"]
    assert seen["cwd"] == str(tmp_path / "out/t1")
    assert seen["fsize"] == [Limits().output_bytes] * 2
    assert seen["pdeathsig"] == signal.SIGKILL
    assert seen["stdin"] == "/dev/null"
    assert seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) <= 4   # + the one listdir itself opened
    status = dict(line.split(":\t", 1) for line in (tmp_path / "out/t1/status").read_text().splitlines())
    ignored, blocked = int(status["SigIgn"], 16), int(status["SigBlk"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), status["SigIgn"]
    assert blocked == 0, status["SigBlk"]


def test_a_write_over_the_file_size_limit_fails_and_stops_at_the_limit(tmp_path):
    b = LocalBackend(tmp_path, ["alice"], runtime="host", limits=Limits(output_bytes=10_000))
    try:
        b.submit(task("t1", ["sh", "-c", 'head -c 50000 /dev/zero > "$BOID_OUTPUT_DIR/big"']))
        done = collect(b, lambda u: u.terminal)[-1]
    finally:
        b.close()
    assert done.state == "FAILED", done
    assert (tmp_path / "out/t1/big").stat().st_size == 10_000


def test_a_missing_command_fails_saying_so(backend):
    backend.submit(task("t1", ["no-such-command-boid"]))
    done = collect(backend, lambda u: u.terminal)[-1]
    assert done.state == "FAILED" and "no-such-command-boid" in done.message, done


def test_logs_are_created_at_the_first_byte_never_through_what_the_unit_planted(backend, tmp_path):
    """A silent unit leaves no log files; a link or file the unit put at a log's name is replaced,
    never written through (a hard link to an operator file would otherwise receive the log)."""
    secret = tmp_path / "operator-keys.json"
    secret.write_text("5K-host-secret")
    backend.submit(task("t0", ["true"], unit="u0"))
    plant = f'ln -s {secret} "$BOID_OUTPUT_DIR/.stdout"; ln {secret} "$BOID_OUTPUT_DIR/.stderr"; echo out; echo err >&2'
    backend.submit(task("t1", ["sh", "-c", plant], unit="u1"))
    ended: set[str] = set()
    ends = {u.task_id: u for u in collect(backend, lambda u: u.terminal and (ended.add(u.task_id) or len(ended) == 2))
            if u.terminal}
    assert ends["t0"].state == "FINISHED" and ends["t1"].state == "FINISHED", ends
    assert not (tmp_path / "out/t0/.stdout").exists() and not (tmp_path / "out/t0/.stderr").exists()
    assert secret.read_text() == "5K-host-secret"
    for name, text in ((".stdout", "out\n"), (".stderr", "err\n")):
        path = tmp_path / "out/t1" / name
        assert not path.is_symlink() and path.stat().st_nlink == 1 and path.read_text() == text


@pytest.mark.parametrize("spawner", ["compiled", "fallback"])
def test_host_attempts_die_with_the_operator_process(tmp_path, spawner):
    """An operator killed with SIGKILL leaves nothing running: its attempts get the parent-death signal."""
    import subprocess
    import textwrap
    code = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from boidcluster.adapters.backend import TaskSpec
        from boidcluster.adapters.local.backend import LocalBackend
        b = LocalBackend({str(tmp_path)!r}, ["alice", "bob"], runtime="host")
        if {spawner!r} == "fallback":
            b._helper = None
        for i in range(2):
            b.submit(TaskSpec(task_id=f"t{{i}}", job="j", unit=f"u{{i}}", command=["sh", "-c", 'echo $$ > "$BOID_OUTPUT_DIR/pid"; exec sleep 60'],
                              env={{}}, output_dir=f"out/t{{i}}"))
        time.sleep(60)
    """)
    operator = subprocess.Popen([sys.executable, "-c", code])
    try:
        pids, end = [], time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < end:
            pids = [int(p.read_text()) for p in tmp_path.glob("out/*/pid") if p.read_text().endswith("\n")]
            time.sleep(0.05)
        assert len(pids) == 2, "the attempts never started"
        time.sleep(0.2)   # `exec sleep` done
    finally:
        operator.kill()
        operator.wait()

    def alive(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().split(") ")[1][0] not in "ZX"
        except FileNotFoundError:
            return False
    end = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)


def test_without_pidfd_a_thread_per_attempt_waits_and_every_end_is_still_reported(tmp_path, monkeypatch):
    """Kernels before 5.3 have no pidfd_open: each attempt's exit is awaited without reaping it (the
    io loop still reaps), and kill, timeout and normal ends behave the same."""
    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    b = LocalBackend(tmp_path, ["alice", "bob"], runtime="host", kill_grace=0.2)
    try:
        got: list = []

        def until(done) -> None:   # keeps every update (collect() drops the rest of a batch)
            end = time.monotonic() + 10
            while not done() and time.monotonic() < end:
                got.extend(b.updates(timeout=0.1))
            assert done(), got
        b.submit(task("t1", ["sh", "-c", "echo hi; exit 2"], unit="u1"))
        b.submit(task("t2", ["sleep", "30"], unit="u2"))
        until(lambda: any(u.task_id == "t2" and u.state == "RUNNING" for u in got))
        b.kill("t2")
        until(lambda: {u.task_id for u in got if u.terminal} == {"t1", "t2"})
    finally:
        b.close()
    ends = {u.task_id: u for u in got if u.terminal}
    assert ends["t1"].state == "FAILED" and ends["t1"].exit_code == 2 and ends["t2"].state == "KILLED", ends
    assert (tmp_path / "out/t1/.stdout").read_text() == "hi\n"


def test_an_output_directory_planted_as_a_link_out_of_storage_is_never_used(backend, tmp_path):
    """An attempt's directory is made under its job's directory, whose resolved path is
    remembered; one that is already there (here a link planted to a directory outside the
    storage) is resolved in full, and the attempt fails instead of writing through it."""
    backend.submit(task("t1", ["true"]))   # out/ is resolved and remembered now
    assert collect(backend, lambda u: u.terminal)[-1].state == "FINISHED"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "out" / "t2")
    backend.submit(task("t2", ["sh", "-c", "echo planted > x; echo out"]))
    end = collect(backend, lambda u: u.terminal)[-1]
    assert end.state == "FAILED" and "leaves the storage root" in end.message
    assert list(outside.iterdir()) == []


def test_ended_tasks_are_forgotten_past_a_bound_so_memory_stays_flat(tmp_path, monkeypatch):
    """The backend keeps only the newest KEEP_ENDED ended tasks (each is kilobytes; a 100,000-unit
    job kept ~700 MB); a recent one still answers reconcile, a long-ended one is unknown."""
    from boidcluster.adapters.local import backend as mod

    monkeypatch.setattr(mod, "KEEP_ENDED", 5)
    b = LocalBackend(tmp_path, [Slot("alice"), Slot("bob")])
    try:
        for i in range(12):
            b.submit(task(f"t{i}", ["true"], unit=f"u{i % 4}"))
        ends = []
        deadline = time.monotonic() + 20
        while len(ends) < 12 and time.monotonic() < deadline:
            ends += [u for u in b.updates(timeout=0.1) if u.terminal]
        assert sorted(u.task_id for u in ends) == sorted(f"t{i}" for i in range(12))
        assert all(u.state == "FINISHED" for u in ends)
        assert len(b._tasks) == 5 and len(b._ended) == 5
        assert set(b._ran) <= {("j", f"u{i}") for i in range(4)} and set(b._per_unit) == set(b._ran)
        newest = ends[-1].task_id
        b.reconcile([newest, "t0" if newest != "t0" else "t1"])
        got = {}
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got.update((u.task_id, u) for u in b.updates(timeout=0.1))
        assert got[newest].state == "FINISHED"
        old = got["t0" if newest != "t0" else "t1"]
        assert old.state == "LOST" and "unknown to the local backend" in old.message
    finally:
        b.close()
