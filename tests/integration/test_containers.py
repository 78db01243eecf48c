"""Units in real podman containers: the sandbox holds against a hostile unit.

Attack tests first: each runs what a malicious unit would do (read the operator's keys and state,
reach the network, write outside its output, fork and allocate without limit, flood its logs,
outlive its operator) in a container of the podman runtime and asserts it fails; where the attack
is meaningful on the host runtime, the same unit is run there too and *succeeds*, which shows the
test can fail. Then images (honoured, resolved once per job to a digest, `boidctl image import`,
a clear error when missing), the self-test and the operator's SIGKILL.

One python image per session (`demo_image`: built from Debian packages by mmdebstrap on first use,
kept in podman's image store afterwards). Every backend is closed at the end of its test and the
test asserts no container of its scope is left (`podman ps -a`).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from boidcluster.adapters.backend import ImageUnavailable, TaskResources, TaskSpec
from boidcluster.adapters.local.backend import LocalBackend, Slot
from boidcluster.adapters.local.images import ensure_demo_image
from boidcluster.adapters.local.runtime import (
    SCOPE_LABEL,
    HostSupport,
    Limits,
    PodmanRuntime,
    owner_alive,
    scope_of,
)

ROOT = Path(__file__).resolve().parents[2]
BOIDCTL = [sys.executable, "-m", "boidcluster.cli.main"]


def ours(scope: str) -> list[str]:
    r = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"label={SCOPE_LABEL}={scope}"],
                       capture_output=True, text=True, check=True)
    return r.stdout.split()


@pytest.fixture(scope="session")
def demo_image() -> str:
    return ensure_demo_image()


@pytest.fixture
def storage(tmp_path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    return root


@pytest.fixture
def make_backend(storage):
    made: list[LocalBackend] = []

    def make(runtime="podman", slots=("alice", "bob"), **kw) -> LocalBackend:
        b = LocalBackend(storage, list(slots), runtime=runtime, kill_grace=0.5, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
    assert ours(scope_of(storage)) == [], "containers left behind"


def spec(tid: str, script: str, image: str | None, *, mem: int = 64, inputs=(), timeout=None, env=None) -> TaskSpec:
    out = f"out/{tid}"
    e = {"BOID_UNIT_INDEX": "0", "BOID_UNIT_PARAMS": "{}", "BOID_OUTPUT_DIR": out,
         "BOID_INPUT_FILES": json.dumps(list(inputs)), **(env or {})}
    return TaskSpec(task_id=tid, job="j", unit=tid, command=["python3", "-c", textwrap.dedent(script)], env=e,
                    output_dir=out, image=image, resources=TaskResources(cpus=1.0, mem=mem), timeout=timeout)


def run(backend: LocalBackend, task: TaskSpec, timeout: float = 90.0):
    backend.submit(task)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for u in backend.updates(timeout=0.2):
            if u.task_id == task.task_id and u.terminal:
                return u
    raise AssertionError(f"{task.task_id} did not end within {timeout}s")


def output(storage: Path, tid: str, name: str = "r.json"):
    return json.loads((storage / "out" / tid / name).read_text())


@pytest.fixture
def on_host(make_backend):
    """The host runtime, for the control runs: the attack must succeed there."""
    return make_backend("host")


# -- attacks ------------------------------------------------------------------------------------
STEAL = """
import json, os
found = {}
for path in os.environ["TARGETS"].split(":"):
    try:
        found[path] = open(path).read()
    except OSError as e:
        found[path] = "ERR " + type(e).__name__
found["env"] = dict(os.environ)
try:
    found["pid1env"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
except OSError as e:
    found["pid1env"] = "ERR " + type(e).__name__
open(os.path.join(os.environ["BOID_OUTPUT_DIR"], "r.json"), "w").write(json.dumps(found))
"""


def test_attack_unit_cannot_read_the_host_state_dir_or_the_operators_keys(make_backend, on_host, storage,
                                                                        tmp_path, demo_image, monkeypatch):
    secret = f"5K-secret-{uuid.uuid4()}"
    state = tmp_path / "state"
    (state / "chain").mkdir(parents=True)
    keys, chain_keys = state / "operator-keys.json", state / "chain" / "keys.json"
    keys.write_text(json.dumps({"boid": secret}))
    chain_keys.write_text(json.dumps({"eosio": secret}))
    keys.chmod(0o644)
    chain_keys.chmod(0o644)  # even world-readable files stay out of reach
    monkeypatch.setenv("BOID_CHAIN_KEYS", secret)
    monkeypatch.setenv("BOID_ZK", "127.0.0.1:2181")
    env = {"TARGETS": f"{keys}:{chain_keys}"}

    # control: on the host runtime the files are readable (it is not a sandbox) ...
    host = run(on_host, TaskSpec(task_id="h1", job="j", unit="h1", command=[sys.executable, "-c", STEAL],
                                 env={"BOID_OUTPUT_DIR": "out/h1", "BOID_INPUT_FILES": "[]", **env},
                                 output_dir="out/h1"))
    assert host.state == "FINISHED", host
    got = output(storage, "h1")
    assert secret in got[str(keys)]
    # ... but even there the operator's environment never reaches the unit
    assert "BOID_CHAIN_KEYS" not in got["env"] and "BOID_ZK" not in got["env"]
    assert secret not in json.dumps(got["env"])

    b = make_backend()
    u = run(b, spec("c1", STEAL, demo_image, env=env))
    assert u.state == "FINISHED", u
    got = output(storage, "c1")
    assert got[str(keys)].startswith("ERR") and got[str(chain_keys)].startswith("ERR")
    assert secret not in (storage / "out/c1/r.json").read_text()
    assert "BOID_CHAIN_KEYS" not in got["env"] and "BOID_ZK" not in got["env"]
    assert got["env"]["BOID_OUTPUT_DIR"] == "/boid/output"
    # nothing of the storage root or the test's directories is in the unit's view either
    seen = {k: v for k, v in got["env"].items() if k != "TARGETS"}
    assert str(tmp_path) not in json.dumps(seen) + got["pid1env"].replace(env["TARGETS"], "")


REACH = """
import json, os, socket
res = {"ifaces": sorted(os.listdir("/sys/class/net"))}
try:
    socket.create_connection((os.environ["HOST_IP"], int(os.environ["HOST_PORT"])), timeout=3).close()
    res["connect"] = "connected"
except OSError as e:
    res["connect"] = "ERR " + str(e)
open(os.path.join(os.environ["BOID_OUTPUT_DIR"], "r.json"), "w").write(json.dumps(res))
"""


def _host_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_attack_unit_cannot_reach_the_network(make_backend, on_host, storage, demo_image):
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, addr = server.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                pass
    threading.Thread(target=serve, daemon=True).start()
    env = {"HOST_IP": _host_ip(), "HOST_PORT": str(server.getsockname()[1])}
    try:
        host = run(on_host, TaskSpec(task_id="h1", job="j", unit="h1", command=[sys.executable, "-c", REACH],
                                     env={"BOID_OUTPUT_DIR": "out/h1", "BOID_INPUT_FILES": "[]", **env},
                                     output_dir="out/h1"))
        assert host.state == "FINISHED" and output(storage, "h1")["connect"] == "connected"  # control
        seen = len(accepted)
        u = run(make_backend(), spec("c1", REACH, demo_image, env=env))
        assert u.state == "FINISHED", u
        got = output(storage, "c1")
        assert got["ifaces"] == ["lo"]
        assert got["connect"].startswith("ERR")
        assert len(accepted) == seen
    finally:
        stop.set()
        server.close()


def test_a_protocol_that_allows_network_gets_it_but_never_the_hosts_loopback(make_backend, storage, demo_image):
    public, local = socket.socket(), socket.socket()
    public.bind(("0.0.0.0", 0))
    local.bind(("127.0.0.1", 0))  # where ZooKeeper and the chain node listen
    for s in (public, local):
        s.listen(8)
    try:
        b = make_backend()
        script = """
        import json, os, socket
        res = {}
        for name, host, port in (("public", os.environ["HOST_IP"], os.environ["PUBLIC_PORT"]),
                                 ("loopback", "10.0.2.2", os.environ["LOCAL_PORT"]),
                                 ("own-loopback", "127.0.0.1", os.environ["LOCAL_PORT"])):
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                res[name] = "connected"
            except OSError as e:
                res[name] = "ERR " + str(e)
        open(os.path.join(os.environ["BOID_OUTPUT_DIR"], "r.json"), "w").write(json.dumps(res))
        """
        env = {"HOST_IP": _host_ip(), "PUBLIC_PORT": str(public.getsockname()[1]),
               "LOCAL_PORT": str(local.getsockname()[1])}
        task = spec("c1", script, demo_image, env=env)
        u = run(b, TaskSpec(**{**task.__dict__, "network": True}))
        assert u.state == "FINISHED", u
        got = output(storage, "c1")
        assert got["public"] == "connected", got
        assert got["loopback"].startswith("ERR") and got["own-loopback"].startswith("ERR"), got
    finally:
        public.close()
        local.close()


WRITE = """
import json, os
res = {}
for path in os.environ["TARGETS"].split(":"):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        res[path] = "written"
    except OSError as e:
        res[path] = "ERR " + type(e).__name__
open(os.path.join(os.environ["BOID_OUTPUT_DIR"], "r.json"), "w").write(json.dumps(res))
"""


def test_attack_writes_outside_the_output_dir_fail(make_backend, on_host, storage, tmp_path, demo_image):
    (storage / "in").mkdir()
    (storage / "in" / "data.txt").write_text("input")
    outside = tmp_path / "outside.txt"
    host = run(on_host, TaskSpec(task_id="h1", job="j", unit="h1", command=[sys.executable, "-c", WRITE],
                                 env={"BOID_OUTPUT_DIR": "out/h1", "BOID_INPUT_FILES": "[]", "TARGETS": str(outside)},
                                 output_dir="out/h1"))
    assert host.state == "FINISHED" and outside.read_text() == "pwned"  # control: the host runtime allows it
    outside.unlink()

    targets = ["/etc/passwd", "/usr/bin/boid", "/var/tmp/x", "/run/x", "/boid/inputs/0/data.txt",
               str(outside), str(storage / "in" / "data.txt"), "/tmp/ok", "/boid/output/ok"]
    u = run(make_backend(), spec("c1", WRITE, demo_image, inputs=["in/data.txt"], env={"TARGETS": ":".join(targets)}))
    assert u.state == "FINISHED", u
    got = output(storage, "c1")
    assert got.pop("/tmp/ok") == "written" and got.pop("/boid/output/ok") == "written"
    assert all(v.startswith("ERR") for v in got.values()), got
    assert not outside.exists() and (storage / "in" / "data.txt").read_text() == "input"


def test_attack_symlinks_in_the_output_never_make_the_operator_read_host_files(make_backend, storage, tmp_path,
                                                                              demo_image):
    """The output dir is a host directory the operator reads after the unit: a symlink planted there
    (an output file, or the log the failure message is cut from) must not lead it to host files."""
    secret = tmp_path / "operator-keys.json"
    secret.write_text("5K-host-secret")
    b = make_backend()
    plant = f"""
    import os, sys
    out = os.environ["BOID_OUTPUT_DIR"]
    os.symlink({str(secret)!r}, os.path.join(out, "result.json"))
    os.unlink(os.path.join(out, ".stderr"))
    os.symlink({str(secret)!r}, os.path.join(out, ".stderr"))
    sys.exit(int(os.environ["CODE"]))
    """
    for tid, code in (("c1", "0"), ("c2", "3")):
        u = run(b, spec(tid, plant, demo_image, env={"CODE": code}))
        assert u.state == "FAILED", u
        assert "5K-host-secret" not in u.message
        assert "only regular files and directories" in u.message and "is a symlink" in u.message, u.message
    assert secret.read_text() == "5K-host-secret"


def test_attack_memory_hog_ends_oomkilled(make_backend, demo_image):
    hog = """
    chunks = []
    while True:
        chunks.append(bytearray(8 * 1024 * 1024))
    """
    b = make_backend()
    u = run(b, spec("c1", hog, demo_image, mem=64))
    assert u.state == "FAILED"
    assert u.message.startswith("OOMKilled") and "64 MiB" in u.message, u.message
    # the hog a child of a shell that exits 1 when it dies: still OOMKilled (the kernel's event, not the code)
    task = spec("c2", hog, demo_image, mem=64)
    shell = TaskSpec(**{**task.__dict__, "command": ["sh", "-c", 'python3 -c "$0" || exit 1', task.command[2]]})
    u = run(b, shell)
    assert u.state == "FAILED" and u.exit_code == 1 and u.message.startswith("OOMKilled"), u


def test_attack_fork_bomb_is_contained_by_the_pids_limit(make_backend, storage, demo_image):
    marker = f"bomb-{uuid.uuid4()}"
    bomb = f"""
    # {marker}
    import errno, json, os, time
    n, err = 0, None
    try:
        while n < 100000:
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
            n += 1
    except OSError as e:
        err = errno.errorcode.get(e.errno)
    open(os.path.join(os.environ["BOID_OUTPUT_DIR"], "r.json"), "w").write(json.dumps({{"n": n, "err": err}}))
    """
    limits = Limits(pids=64)
    b = make_backend(limits=limits)
    t0 = time.monotonic()
    u = run(b, spec("c1", bomb, demo_image, mem=256))
    assert u.state == "FINISHED", u
    got = output(storage, "c1")
    assert got["err"] == "EAGAIN" and got["n"] < limits.pids
    assert time.monotonic() - t0 < 60  # the machine stayed responsive enough to finish promptly
    # the whole process tree ended with the unit: no forked child survives anywhere
    left = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    left.append(p.name)
            except OSError:
                pass
    assert left == []


def test_attack_log_flood_and_output_flood_fail_with_the_limit_named(make_backend, storage, demo_image):
    limits = Limits(log_bytes=1024 * 1024, output_bytes=4 * 1024 * 1024)
    b = make_backend(limits=limits)
    flood = """
    import sys
    block = "x" * 65536
    while True:
        sys.stdout.write(block)
    """
    u = run(b, spec("c1", flood, demo_image))
    assert u.state == "FAILED" and "stdout exceeded the log limit of 1048576 bytes" in u.message, u.message
    assert (storage / "out/c1/.stdout").stat().st_size == limits.log_bytes

    files = """
    import os
    block = b"y" * (1024 * 1024)
    for i in range(1000):  # each file below the per-file limit, the total far above the output limit
        with open(os.path.join(os.environ["BOID_OUTPUT_DIR"], f"f{i}"), "wb") as f:
            f.write(block * 3)
    """
    u = run(b, spec("c2", files, demo_image))
    assert u.state == "FAILED" and "outputs exceeded the output limit" in u.message, u.message
    assert sum(p.stat().st_size for p in (storage / "out/c2").iterdir()) < 1000 * 3 * 1024 * 1024


def test_attack_a_flood_of_empty_files_fails_on_the_file_count(make_backend, storage, demo_image):
    b = make_backend(limits=Limits(output_files=500))
    u = run(b, spec("c1", """
    import os
    for i in range(100000):
        open(os.path.join(os.environ["BOID_OUTPUT_DIR"], str(i)), "w").close()
    """, demo_image))
    assert u.state == "FAILED" and "limit of 500 files and directories" in u.message, u.message


def test_paths_and_image_refs_that_podman_would_misparse_are_refused(make_backend, storage, demo_image):
    b = make_backend()
    (storage / "in").mkdir()
    (storage / "in" / "x.txt:rw").write_text("x")
    u = run(b, spec("c1", "pass", demo_image, inputs=["in/x.txt:rw"]))
    assert u.state == "FAILED" and "cannot be mounted into a container" in u.message, u.message
    for ref in ("--help", "alpine latest", "-v=/:/host"):
        with pytest.raises(ImageUnavailable, match="is not an image reference"):
            b.resolve_image(ref)
    u = run(b, spec("c2", "pass", "--privileged"))
    assert u.state == "FAILED" and "is not an image reference" in u.message


def test_timeout_kills_the_container(make_backend, storage, demo_image):
    b = make_backend()
    task = spec("c1", "import time; time.sleep(300)", demo_image, timeout=2)
    t0 = time.monotonic()
    u = run(b, task)
    assert u.state == "FAILED" and u.message.startswith("timed out after 2s"), u
    assert time.monotonic() - t0 < 30
    assert ours(b.scope) == []


def _operator_killed_mid_unit(storage: Path, image: str, tmp_path: Path) -> str:
    """A real operator process (a LocalBackend on `storage`) runs a long unit and is SIGKILLed;
    returns the scope whose container it leaves running."""
    script = tmp_path / "op.py"
    script.write_text(textwrap.dedent(f"""
        from boidcluster.adapters.backend import TaskResources, TaskSpec
        from boidcluster.adapters.local.backend import LocalBackend
        b = LocalBackend({str(storage)!r}, ["alice"], runtime="podman")
        env = {{"BOID_OUTPUT_DIR": "out/t1", "BOID_INPUT_FILES": "[]"}}
        b.submit(TaskSpec("t1", "j", "u", ["sleep", "600"], env, "out/t1", image={image!r},
                          resources=TaskResources(mem=32)))
        while True:
            for u in b.updates(timeout=0.2):
                print(u.state, flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    scope = scope_of(storage)
    try:
        assert proc.stdout.readline().strip() == "STAGING"
        assert proc.stdout.readline().strip() == "RUNNING"
        end = time.monotonic() + 30
        while not ours(scope) and time.monotonic() < end:
            time.sleep(0.2)
        assert ours(scope), "the unit's container never appeared"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the operator
        proc.wait()
    time.sleep(1)
    assert len(ours(scope)) == 1  # the container outlived its operator
    return scope


def test_orphans_are_removed_and_reported_lost_after_sigkill_of_the_operator(storage, demo_image, tmp_path):
    scope = _operator_killed_mid_unit(storage, demo_image, tmp_path)
    b = LocalBackend(storage, ["alice"], runtime="podman")
    try:
        assert ours(scope) == []
        for d in Path(tempfile.gettempdir()).glob("boid-podman-*"):  # nor the dead one's private directory
            assert not (d / ".owner").exists() or owner_alive((d / ".owner").read_text()), d
        b.reconcile(["t1"])
        (u,) = b.updates(timeout=5)
        assert u.task_id == "t1" and u.state == "LOST" and "earlier operator process" in u.message
    finally:
        b.close()


def test_a_second_operator_on_the_same_storage_leaves_a_live_replicas_containers_alone(make_backend, storage,
                                                                                      demo_image):
    a = make_backend(slots=["alice"])
    a.submit(spec("c1", "import time; time.sleep(600)", demo_image))
    end = time.monotonic() + 30
    while not ours(a.scope) and time.monotonic() < end:
        time.sleep(0.2)
    assert len(ours(a.scope)) == 1
    b = LocalBackend(storage, ["bob"], runtime="podman")  # e.g. a standby replica starting
    b.close()
    assert len(ours(a.scope)) == 1  # neither b's start nor its close touched a's unit
    a.kill("c1")
    states = []
    end = time.monotonic() + 30
    while "KILLED" not in states and time.monotonic() < end:
        states += [u.state for u in a.updates(timeout=0.2)]
    assert states[-1] == "KILLED"


def test_boidctl_down_removes_what_a_killed_cluster_left(tmp_path, demo_image):
    home = tmp_path / "home"
    (home / "storage").mkdir(parents=True)
    scope = _operator_killed_mid_unit(home / "storage", demo_image, tmp_path)
    env = {**os.environ, "BOID_HOME": str(home)}
    r = subprocess.run([*BOIDCTL, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "removed 1 leftover unit containers" in r.stdout, r.stdout + r.stderr
    assert ours(scope) == []


# -- images ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def marker_image(tmp_path_factory) -> str:
    """A busybox root filesystem whose /etc/os-release is not the host's, imported with the CLI."""
    name = "localhost/boid-test-marker:1"
    tar_path = tmp_path_factory.mktemp("img") / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
        for cmd in ("sh", "cat"):
            info = tarfile.TarInfo(f"bin/{cmd}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        release = b'PRETTY_NAME="Boid test image"\nID=boidtest\n'
        info = tarfile.TarInfo("etc/os-release")
        info.size = len(release)
        tar.addfile(info, io.BytesIO(release))
    r = subprocess.run([*BOIDCTL, "image", "import", str(tar_path), "--name", name], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"image {name} imported (sha256:"), r.stdout
    yield name
    subprocess.run(["podman", "rmi", "--force", name], capture_output=True)  # imported anew each session


def test_the_image_is_honoured(make_backend, storage, marker_image):
    b = make_backend()
    digest = b.resolve_image(marker_image)
    assert digest.startswith("sha256:") and len(digest) == 71
    task = TaskSpec(task_id="c1", job="j", unit="u", command=["sh", "-c", "cat /etc/os-release > os-release"],
                    env={"BOID_OUTPUT_DIR": "out/c1", "BOID_INPUT_FILES": "[]"}, output_dir="out/c1", image=digest,
                    resources=TaskResources(mem=16))
    u = run(b, task)
    assert u.state == "FINISHED", u
    seen = (storage / "out/c1/os-release").read_text()
    assert seen == 'PRETTY_NAME="Boid test image"\nID=boidtest\n'
    assert seen != Path("/etc/os-release").read_text()


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_image_import_loads_oci_and_docker_archives(marker_image, tmp_path, fmt):
    rt = PodmanRuntime()
    archive = tmp_path / "image.tar"
    subprocess.run(rt._cmd("save", "--quiet", "--format", fmt, "--output", str(archive), marker_image), check=True)
    name = f"localhost/boid-test-marker:{fmt}"
    r = subprocess.run([*BOIDCTL, "image", "import", str(archive), "--name", name], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"image {name} loaded ({rt.image_id(marker_image)})"
        assert rt.resolve_image(name) == rt.image_id(marker_image)
    finally:
        subprocess.run(rt._cmd("untag", rt.image_id(marker_image) or marker_image, name), capture_output=True)


def test_a_missing_image_is_a_clear_error_naming_it_and_how_to_provide_it(make_backend):
    b = make_backend()
    with pytest.raises(ImageUnavailable) as e:
        b.resolve_image("registry.invalid/nobody/missing:1")
    msg = str(e.value)
    assert "'registry.invalid/nobody/missing:1'" in msg and "boidctl image import" in msg


def test_image_import_rejects_what_it_cannot_load(tmp_path):
    bad = tmp_path / "notatar.bin"
    bad.write_bytes(b"\x00garbage" * 10)
    r = subprocess.run([*BOIDCTL, "image", "import", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "not a tar archive" in r.stderr
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
    r = subprocess.run([*BOIDCTL, "image", "import", str(rootfs)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "--name" in r.stderr


# -- self-test --------------------------------------------------------------------------------------
def test_self_test_refuses_a_broken_runtime_and_its_slot_gets_no_work(make_backend, storage, demo_image):
    broken = PodmanRuntime(podman="/nonexistent/podman")
    b = make_backend(slots=[Slot("alice", runtime=broken), Slot("bob")])
    report = {s.contributor: t for s, t in b.slot_report()}
    assert not report["alice"].ok and "'/nonexistent/podman' not found" in report["alice"].message
    assert report["bob"].ok
    assert b.contributors() == ["bob"] and b.capacity() == 1
    u = run(b, spec("c1", "pass", demo_image))
    assert u.state == "FINISHED" and u.contributor == "bob"


def test_self_test_names_what_a_cgroup_v1_host_needs():
    no_runc = PodmanRuntime(support=HostSupport(cgroup_v2=False, rootless=False, oci_runtimes={"crun": "/x/crun"}))
    t = no_runc.self_test()
    assert not t.ok and "install runc" in t.message
    rootless = PodmanRuntime(support=HostSupport(cgroup_v2=False, rootless=True, oci_runtimes={"runc": "/x/runc"}))
    t = rootless.self_test()
    assert not t.ok and "cgroup v1" in t.message


def test_operator_run_refuses_to_start_when_no_worker_can_run_containers(zk_hosts, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BOID_ZK"}
    env["PATH"] = str(Path(sys.executable).parent)  # no podman on PATH
    r = subprocess.run([*BOIDCTL, "--zk", zk_hosts, "operator", "run", "--storage", f"file://{tmp_path}",
                        "--slot", "alice"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode != 0
    assert "error: no worker slot can run units: podman runtime unusable: " in r.stderr, r.stderr


# -- jobs through the operator ------------------------------------------------------------------------
@pytest.fixture
def operator_on(zk_hosts, storage):
    from boidcluster.adapters.storage import Storage
    from boidcluster.adapters.store import Store
    from boidcluster.engine.operator import Operator
    from boidcluster.engine.world import World
    from boidcluster.reconcilers import registry
    from boidcluster.reconcilers.jobs import Dispatcher

    made = []

    def start(backend: LocalBackend):
        store = Store(zk_hosts, timeout=10)
        world = World(store=store, storage=Storage(f"file://{storage}"), backend=backend,
                      dispatcher=Dispatcher(backend, poll=0.05, retry_backoff=0.05))
        op = Operator(store, world, registry, workers=2).start()
        made.append((op, store))
        return store

    yield start
    for op, store in made:
        op.stop()
        store.close()


def _protocol():
    from boidcluster.model.resources import Protocol

    return Protocol.model_validate({"metadata": {"name": "mc"}, "spec": {
        "title": "t", "owner": "boidteam", "researcher": "researcher1", "datadir": "protocols/mc",
        "fund": {"account": "boidfund", "quantity": "1000.0000 BOID"},
        "payRates": {"worker": "1.0000 BOID", "dispatcher": "0.5000 BOID"}}})


def _job(name: str, image: str):
    from boidcluster.model.resources import Job

    return Job.model_validate({"metadata": {"name": name}, "spec": {
        "protocol": "mc", "image": image, "resources": {"mem": "32Mi", "cpus": 0.5},
        "command": ["sh", "-c", "cat /etc/os-release > \"$BOID_OUTPUT_DIR/os\""],
        "workUnits": {"count": 3}, "replication": {"replicas": 2, "quorum": 2},
        "output": {"path": f"results/{name}", "reduce": "none"}}})


def _wait_job(store, name: str, until, timeout: float = 120.0):
    from boidcluster.model.resources import Job

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        j = store.get(Job, name)
        if j.status is not None and until(j):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {name}: {store.get(Job, name).status}")


def test_a_job_runs_every_replica_on_the_digest_its_image_resolved_to(make_backend, operator_on, storage,
                                                                      marker_image):
    backend = make_backend()
    digest = backend.resolve_image(marker_image)
    store = operator_on(backend)
    store.create(_protocol())
    store.create(_job("marker", marker_image))
    j = _wait_job(store, "marker", lambda j: j.status.phase in ("Succeeded", "Failed"))
    assert j.status.phase == "Succeeded", j.status
    assert j.status.image_digest == digest
    manifest = json.loads((storage / "protocols/mc/results/marker/manifest.json").read_text())
    assert manifest["image"] == marker_image and manifest["image_digest"] == digest
    runs = list((storage / "protocols/mc/.runs").rglob("os"))
    assert len(runs) >= 6  # 3 units x 2 replicas, each saw the image's os-release
    assert all(p.read_text().startswith('PRETTY_NAME="Boid test image"') for p in runs)


def test_a_job_whose_image_is_missing_stays_pending_saying_how_to_provide_it(make_backend, operator_on):
    store = operator_on(make_backend())
    store.create(_protocol())
    store.create(_job("missing", "registry.invalid/team/absent:2"))
    j = _wait_job(store, "missing", lambda j: j.status.condition("Ready") is not None)
    c = j.status.condition("Ready")
    assert j.status.phase == "Pending" and c.reason == "ImageUnavailable"
    assert "'registry.invalid/team/absent:2'" in c.message and "boidctl image import" in c.message


def test_resources_become_limits_and_more_cpus_than_the_machine_has_are_clamped():
    rt = PodmanRuntime()
    args = rt.sandbox_args(TaskResources(cpus=64.0, mem=300), network=False, timeout=None)
    flags = dict(zip(args, args[1:]))
    assert flags["--memory"] == flags["--memory-swap"] == "300m"
    assert float(flags["--cpus"]) == os.cpu_count()
    assert flags["--network"] == "none" and flags["--cap-drop"] == "all"
