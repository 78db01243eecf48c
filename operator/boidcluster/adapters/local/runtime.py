"""Where one unit attempt of the local backend runs: a podman container (the default) or the host.

Why containers: a unit is a stranger's program on a volunteer's machine. Run on the host it could
read the operator's chain keys, reach ZooKeeper and the network, write anywhere, fork and allocate
without limit. `PodmanRuntime` runs each attempt as one OCI container at least as tight as
Kubernetes' "restricted" pod security level:

- `--network none` (unless the Protocol allows network: then slirp4netns without access to the
  host's loopback), `--read-only` root with a size-limited
  tmpfs /tmp (podman's other writable tmpfs mounts switched off), a non-root user (65534 when
  podman runs as root; the operator's own uid mapped by `--userns keep-id` when rootless),
  `--cap-drop all`, `no-new-privileges`, a pids limit, `--memory` (= `--memory-swap`) and
  `--cpus` from the task's resources, explicit ulimits (nofile, nproc, fsize = the output limit);
- the unit's output directory is the only writable mount (/boid/output), each input file is
  mounted read-only under /boid/inputs; nothing else of the host is visible, and the container's
  environment holds only the unit's variables (podman reads them by name from its own
  environment, which is built from scratch, so values never appear in process arguments);
- every container carries labels (scope = the backend's storage root, task, job, unit, attempt),
  so `sweep` finds and removes what an operator killed with SIGKILL left running;
- `--log-driver none`: podman keeps no copy of the logs; the backend reads the unit's stdout and
  stderr through pipes and keeps at most `Limits.log_bytes` of each.

OOMKilled: conmon writes a file `oom` into its working directory when the container's memory
cgroup kills a process; each attempt's podman (and so conmon) runs in a private directory of the
operator's, and that file is the evidence. (podman 4.3's `State.OOMKilled` stays false on cgroup
v1 with runc, measured here.) Failing that: the unit's command is PID 1 of its own PID namespace
and the kernel never delivers SIGKILL to a namespace's init from inside it, so an exit by SIGKILL
(137) that neither the backend (kill, timeout, a limit) nor anyone on the host asked for is the
OOM killer too.

Options follow what the host supports (`HostSupport.detect`), not this machine: on cgroup v1 or
hybrid hierarchies crun fails ("cgroups in hybrid mode not supported"), so runc with the cgroupfs
manager is chosen; on cgroup v2 podman's own defaults are kept. `self_test` runs a tiny container
with the full sandbox and checks the limits are really applied; a runtime that fails it is never
offered work.

`HostRuntime` is for development only and says so loudly: commands run as the operator's user
with no isolation but a scrubbed environment (PATH, HOME=the output dir, LANG; never the
operator's variables such as BOID_CHAIN_KEYS), its own session and process group, a parent-death
signal and the same output file-size ulimit (spawn.py applies them; the podman client gets its own
session and the parent-death signal too).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from boidcluster.adapters.backend import ImageUnavailable, TaskResources

from .spawn import Proc

log = logging.getLogger(__name__)

SCOPE_LABEL = "io.boid.scope"
TASK_LABEL = "io.boid.task"
JOB_LABEL = "io.boid.job"
UNIT_LABEL = "io.boid.unit"
ATTEMPT_LABEL = "io.boid.attempt"
CONTRIBUTOR_LABEL = "io.boid.contributor"
OWNER_LABEL = "io.boid.owner"      # host/pid/start time of the operator process that ran it

WORKDIR_PREFIX = "boid-podman-"   # the private working directories of podman/conmon, under $TMPDIR
OUTPUT_MOUNT = "/boid/output"
INPUTS_MOUNT = "/boid/inputs"
NOBODY = 65534

SELFTEST_IMAGE = "localhost/boid-selftest:busybox"
"""A tiny image made from the host's busybox-static (Debian package), for the self-test only."""


@dataclass(frozen=True)
class Limits:
    """What the sandbox bounds besides `resources` (the unit fails with a reason saying which)."""

    log_bytes: int = 8 * 1024 * 1024        # kept per stream (stdout, stderr); more fails the unit
    output_bytes: int = 1024 * 1024 * 1024  # total of the output directory (and any one file)
    output_files: int = 100_000             # files and directories in the output directory
    pids: int = 256                         # processes and threads in the container
    tmp_mib: int = 64                       # the tmpfs /tmp (charged to the memory limit)
    nofile: int = 1024


@dataclass(frozen=True)
class Launch:
    """One attempt, as the backend hands it to a runtime."""

    task_id: str
    job: str
    unit: str
    attempt: str
    contributor: str
    command: list[str]
    env: dict[str, str]          # the unit's own variables (job env, BOID_UNIT_*, BOID_CONTRIBUTOR...)
    image: str | None
    resources: TaskResources
    network: bool
    output: Path                 # host directory, created by the backend
    inputs: list[Path]           # host files
    timeout: float | None
    scope: str


@dataclass
class Prepared:
    """What the backend starts (spawn.py adds the session, the parent-death signal and `fsize`)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    container: str | None = None  # container name, for kill
    fsize: int | None = None      # RLIMIT_FSIZE of the started process (None: inherited)


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    runtime: str
    message: str


class Runtime(Protocol):
    name: str
    sandboxed: bool

    def prepare(self, launch: Launch) -> Prepared:
        """The process that runs the attempt (argv, environment, cwd)."""

    def kill(self, prepared: Prepared, proc: Proc, sig: int) -> None:
        """Signal the attempt's whole process tree."""

    def exit_reason(self, prepared: Prepared, code: int) -> str | None:
        """Why an attempt nobody killed ended with `code`, when the runtime knows (e.g. OOMKilled);
        also releases what `prepare` made for the attempt."""

    def self_test(self) -> SelfTest:
        """Can this runtime run units here? Run once before any slot using it is offered work."""

    def resolve_image(self, ref: str) -> str | None:
        """The digest every attempt of a job runs (None: this runtime ignores images)."""

    def sweep(self, scope: str, *, mine: bool = False) -> list[str]:
        """Remove the attempts of `scope` whose operator process is gone (or, with `mine`, this
        process's own); returns their task ids. Another live operator's containers are left alone."""


def scope_of(storage_root: str | os.PathLike[str]) -> str:
    """Containers of one cluster (one storage root) carry this scope; others on the machine are not ours."""
    return hashlib.sha256(str(Path(storage_root).resolve()).encode()).hexdigest()[:16]


def _start_time(pid: int) -> str | None:
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return line.rsplit(")", 1)[1].split()[19]  # field 22, starttime (clock ticks since boot)


def process_owner(pid: int | None = None) -> str:
    """This process as a container owner: host, pid and start time (a reused pid is not the owner)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid)}"


def owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition("/")
    pid, _, start = rest.partition("/")
    start = start.split("/")[0]  # an instance suffix names one runtime within the process
    if host != socket.gethostname() or not pid.isdigit():
        return False  # not a process of this machine: no operator here runs it
    return _start_time(int(pid)) == start


# -- host ---------------------------------------------------------------------------------------
class HostRuntime:
    """DEVELOPMENT ONLY: the unit runs on the host as the operator's user, NOT sandboxed."""

    name = "host"
    sandboxed = False

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def prepare(self, launch: Launch) -> Prepared:
        out = str(launch.output)
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": out,
               "LANG": "C.UTF-8", **launch.env,
               "BOID_OUTPUT_DIR": out,
               "BOID_INPUT_FILES": json.dumps([str(p) for p in launch.inputs]) if launch.inputs else "[]"}
        return Prepared(list(launch.command), env, cwd=launch.output, fsize=self.limits.output_bytes)

    def kill(self, prepared: Prepared, proc: Proc, sig: int) -> None:
        proc.signal_group(sig)   # never a reaped leader's group id: the pid may belong to a new task

    def exit_reason(self, prepared: Prepared, code: int) -> str | None:
        return None

    def self_test(self) -> SelfTest:
        return SelfTest(True, self.name, "host runtime: units run UNSANDBOXED as the operator's user "
                                         "(development only; `--runtime podman` isolates them)")

    def resolve_image(self, ref: str) -> str | None:
        return None

    def sweep(self, scope: str, *, mine: bool = False) -> list[str]:
        return []  # host processes die with the operator (parent-death signal)


# -- podman -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostSupport:
    """What this machine's kernel and packages allow, detected once."""

    cgroup_v2: bool                 # unified hierarchy only (else v1 or hybrid)
    rootless: bool
    oci_runtimes: dict[str, str] = field(default_factory=dict)   # name -> path (runc, crun)

    @classmethod
    def detect(cls) -> "HostSupport":
        return cls(cgroup_v2=Path("/sys/fs/cgroup/cgroup.controllers").exists(), rootless=os.geteuid() != 0,
                   oci_runtimes={n: p for n in ("runc", "crun") if (p := shutil.which(n))})

    def global_args(self) -> tuple[list[str], str | None]:
        """podman's global options for this host, or (.., why it cannot work)."""
        if self.cgroup_v2:
            return [], None  # podman's defaults (crun or runc, systemd cgroups) work on cgroup v2
        if "runc" not in self.oci_runtimes:
            return [], ("this kernel uses cgroup v1 (or hybrid) hierarchies, where crun fails; "
                        "install runc (apt-get install runc)")
        if self.rootless:
            return [], ("rootless podman cannot apply memory and pids limits on cgroup v1: run the operator "
                        "as root, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)")
        return ["--runtime", self.oci_runtimes["runc"], "--cgroup-manager", "cgroupfs"], None


_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]")
_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


def check_image_ref(ref: str) -> str:
    """An image reference goes to podman as an argument: never an option, never two words."""
    if not _IMAGE_REF.match(ref):
        raise ImageUnavailable(f"image {ref!r} is not an image reference (e.g. localhost/name:tag, "
                               "docker.io/library/python:3.11-slim or sha256:<digest>)")
    return ref


def _mountable(path: Path) -> str:
    """podman's --volume splits on ':' and its options on ','; such paths are refused, not mis-mounted."""
    s = str(path)
    if ":" in s or "," in s:
        raise ValueError(f"{s!r} cannot be mounted into a container: ':' and ',' are not allowed in its path")
    return s


class PodmanRuntime:
    """Each attempt is one `podman run` of the job's image, sandboxed (module docstring)."""

    name = "podman"
    sandboxed = True

    def __init__(self, podman: str = "podman", *, limits: Limits = Limits(),
                 support: HostSupport | None = None) -> None:
        self.podman = podman
        self.limits = limits
        self.support = support or HostSupport.detect()
        self.global_args, self.unsupported = self.support.global_args()
        self.owner = f"{process_owner()}/{uuid.uuid4().hex[:12]}"  # what this runtime's containers carry
        self._workdirs: Path | None = None
        self._resolved: dict[str, str] = {}

    # the podman client's own environment: nothing of the operator's but what podman needs
    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TMPDIR",
                "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def _cmd(self, *args: str) -> list[str]:
        return [self.podman, *self.global_args, *args]

    def _user_args(self) -> list[str]:
        if self.support.rootless:
            return ["--userns", "keep-id", "--user", f"{os.getuid()}:{os.getgid()}"]
        return ["--user", f"{NOBODY}:{NOBODY}"]

    def sandbox_args(self, resources: TaskResources, *, network: bool, timeout: float | None) -> list[str]:
        lim = self.limits
        mem = max(int(resources.mem), 6)  # podman refuses less than 6 MiB
        args = ["--read-only", "--read-only-tmpfs=false",
                "--tmpfs", f"/tmp:rw,nosuid,nodev,size={lim.tmp_mib}m,mode=1777",
                *self._user_args(), "--cap-drop", "all", "--security-opt", "no-new-privileges",
                "--pids-limit", str(lim.pids), "--memory", f"{mem}m", "--memory-swap", f"{mem}m",
                "--ulimit", f"nofile={lim.nofile}:{lim.nofile}",
                "--ulimit", f"nproc={lim.pids * 16}:{lim.pids * 16}",
                "--ulimit", f"fsize={lim.output_bytes}:{lim.output_bytes}",
                "--log-driver", "none", "--pull", "never", "--entrypoint", "", "--env", "HOME=/tmp"]
        if resources.cpus and resources.cpus > 0:  # podman refuses more than the machine has
            args += ["--cpus", f"{min(float(resources.cpus), float(os.cpu_count() or 1)):g}"]
        # Allowed network is user-mode NAT (slirp4netns) without the host's loopback: a unit with
        # network still never reaches services bound to 127.0.0.1 here (ZooKeeper, the chain node).
        args += ["--network", "slirp4netns:allow_host_loopback=false" if network else "none"]
        if timeout:  # conmon kills it even if the operator is gone
            args += ["--timeout", str(math.ceil(timeout) + 10)]
        return args

    def prepare(self, launch: Launch) -> Prepared:
        if self.unsupported:
            raise OSError(self.unsupported)
        if not launch.image:
            raise ValueError("the podman runtime needs the task's image")
        try:
            check_image_ref(launch.image)
        except ImageUnavailable as e:
            raise ValueError(str(e)) from None
        if not self.support.rootless:  # the container's user (nobody) writes the output directory
            os.chown(launch.output, NOBODY, NOBODY)
        name = "boid-" + _NAME_OK.sub("_", f"{launch.scope[:8]}-{launch.task_id}")[:200]
        labels = {SCOPE_LABEL: launch.scope, TASK_LABEL: launch.task_id, JOB_LABEL: launch.job,
                  UNIT_LABEL: launch.unit, ATTEMPT_LABEL: launch.attempt, CONTRIBUTOR_LABEL: launch.contributor,
                  OWNER_LABEL: self.owner}
        inputs = [f"{INPUTS_MOUNT}/{i}/{p.name}" for i, p in enumerate(launch.inputs)]
        unit_env = {**launch.env, "BOID_OUTPUT_DIR": OUTPUT_MOUNT, "BOID_INPUT_FILES": json.dumps(inputs)}
        env = self._base_env()
        argv = self._cmd("run", "--rm", "--name", name)
        for k, v in labels.items():
            argv += ["--label", f"{k}={v}"]
        argv += self.sandbox_args(launch.resources, network=launch.network, timeout=launch.timeout)
        argv += ["--workdir", OUTPUT_MOUNT, "--volume", f"{_mountable(launch.output)}:{OUTPUT_MOUNT}:rw"]
        for host, inside in zip(launch.inputs, inputs):
            argv += ["--volume", f"{_mountable(host)}:{_mountable(Path(inside))}:ro"]
        for k, v in unit_env.items():
            if k in env:  # a name podman itself needs: the value goes on the command line (never a secret)
                argv += ["--env", f"{k}={v}"]
            else:
                argv += ["--env", k]
        env.update({k: v for k, v in unit_env.items() if k not in env})
        argv += [launch.image, *launch.command]
        # podman's (and conmon's) working directory: private to the operator, never the unit's output
        if self._workdirs is None:
            self._workdirs = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self._workdirs / ".owner").write_text(self.owner)
        cwd = Path(tempfile.mkdtemp(prefix=_NAME_OK.sub("_", launch.task_id)[:50] + ".", dir=self._workdirs))
        return Prepared(argv, env, cwd=cwd, container=name)

    def kill(self, prepared: Prepared, proc: Proc, sig: int) -> None:
        """`podman kill` (the client dying does not stop the container); retried until the container
        exists or the client has ended, in a thread so the caller never waits for podman."""
        def run() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                r = subprocess.run(self._cmd("kill", "--signal", signal.Signals(sig).name, prepared.container or ""),
                                   env=self._base_env(), capture_output=True, timeout=60)
                if r.returncode == 0:
                    return
                time.sleep(0.2)
        threading.Thread(target=run, name=f"boid-kill-{prepared.container}", daemon=True).start()

    def exit_reason(self, prepared: Prepared, code: int) -> str | None:
        oom = prepared.cwd is not None and (prepared.cwd / "oom").exists()
        if prepared.cwd is not None:
            shutil.rmtree(prepared.cwd, ignore_errors=True)
        if oom or code == 137:  # conmon's OOM evidence, or SIGKILL of the namespace's init (docstring)
            return "OOMKilled"
        if code == 125:
            return "podman could not create the container"
        if code in (126, 127):
            return "the command cannot be run in the image"
        return None

    # -- images -------------------------------------------------------------------------------
    def image_id(self, ref: str) -> str | None:
        r = subprocess.run(self._cmd("image", "inspect", "--format", "{{.Id}}", ref), env=self._base_env(),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            return None
        ident = r.stdout.strip().splitlines()[0]
        return ident if ident.startswith("sha256:") else f"sha256:{ident}"

    def resolve_image(self, ref: str) -> str:
        """The image's content digest (its config digest, `sha256:...`, which `podman run` accepts):
        from the local store, else pulled; else ImageUnavailable saying how to provide it."""
        if ref in self._resolved:
            return self._resolved[ref]
        check_image_ref(ref)
        digest = self.image_id(ref)
        if digest is None:
            r = subprocess.run(self._cmd("pull", "--quiet", ref), env=self._base_env(), capture_output=True,
                               text=True, timeout=1800)
            digest = self.image_id(ref) if r.returncode == 0 else None
            if digest is None:
                why = (r.stderr.strip().splitlines() or ["pull failed"])[-1][:300]
                raise ImageUnavailable(
                    f"image {ref!r} is not on this machine and could not be pulled ({why}); provide it with "
                    f"`boidctl image import FILE --name {ref}` (an OCI or docker archive, e.g. from "
                    f"`podman save`, or a root filesystem tarball) or `podman pull {ref}` where a registry is reachable")
        self._resolved[ref] = digest
        return digest

    # -- self-test --------------------------------------------------------------------------------
    def ensure_selftest_image(self) -> str:
        if self.image_id(SELFTEST_IMAGE):
            return SELFTEST_IMAGE
        busybox = shutil.which("busybox")
        if busybox is None:
            raise OSError("no busybox for the self-test image: apt-get install busybox-static")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for name in ("sh", "id", "cat", "touch", "echo"):
                info = tarfile.TarInfo(f"bin/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
            for d in ("tmp", "proc", "sys", "dev", "etc"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        r = subprocess.run(self._cmd("import", "--quiet", "-", SELFTEST_IMAGE), input=buf.getvalue(),
                           env=self._base_env(), capture_output=True, timeout=300)
        if r.returncode != 0:
            raise OSError(f"podman import of the self-test image failed: {r.stderr.decode(errors='replace')[-300:]}")
        return SELFTEST_IMAGE

    def self_test(self) -> SelfTest:
        """Run one tiny container with the full sandbox; check it ran as non-root, with the memory
        and pids limits really applied and the root filesystem read-only."""
        def fail(why: str) -> SelfTest:
            return SelfTest(False, self.name, f"podman runtime unusable: {why}")
        if self.unsupported:
            return fail(self.unsupported)
        if shutil.which(self.podman) is None:
            return fail(f"{self.podman!r} not found: apt-get install podman (and runc on cgroup v1 hosts)")
        try:
            image = self.ensure_selftest_image()
            script = ("id -u; cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
                      " cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max;"
                      " touch /rootfs-write 2>/dev/null && echo writable || echo read-only")
            r = subprocess.run(self._cmd("run", "--rm", "--label", f"{SCOPE_LABEL}=selftest",
                                         *self.sandbox_args(TaskResources(cpus=0.5, mem=16), network=False, timeout=None),
                                         image, "sh", "-c", script),
                               env=self._base_env(), capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            return fail(str(e))
        if r.returncode != 0:
            return fail(f"a test container failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")
        lines = r.stdout.split()
        checks = [(lines[0:1] != ["0"] if not self.support.rootless else bool(lines[0:1]), "runs as a non-root user"),
                  (lines[1:2] == [str(16 * 1024 * 1024)], "applies the memory limit"),
                  (lines[2:3] == [str(self.limits.pids)], "applies the pids limit"),
                  (lines[3:4] == ["read-only"], "mounts the root filesystem read-only")]
        missing = [what for ok, what in checks if not ok]
        if missing:
            return fail(f"a test container ran but podman here {' / '.join('never ' + m for m in missing)} "
                        f"(saw {r.stdout.strip()!r})")
        how = " ".join(self.global_args) or "podman defaults"
        return SelfTest(True, self.name, f"podman runtime ok ({how}; cgroup {'v2' if self.support.cgroup_v2 else 'v1/hybrid'}"
                                         f"{', rootless' if self.support.rootless else ''})")

    # -- orphans --------------------------------------------------------------------------------
    def containers(self, scope: str) -> dict[str, tuple[str, str]]:
        """Container id -> (task id, owner) of every container of `scope` (running or not)."""
        r = subprocess.run(self._cmd("ps", "-a", "--filter", f"label={SCOPE_LABEL}={scope}", "--format",
                                     f'{{{{.ID}}}} {{{{index .Labels "{TASK_LABEL}"}}}} {{{{index .Labels "{OWNER_LABEL}"}}}}',
                                     "--no-trunc"),
                           env=self._base_env(), capture_output=True, text=True, timeout=120)
        out = {}
        for line in r.stdout.splitlines():
            cid, task, owner = (line.split(" ") + ["", ""])[:3]
            out[cid] = (task, owner)
        return out

    def sweep(self, scope: str, *, mine: bool = False) -> list[str]:
        found = {cid: task for cid, (task, owner) in self.containers(scope).items()
                 if (owner == self.owner if mine else not owner_alive(owner))}
        if found:
            subprocess.run(self._cmd("rm", "--force", "--time", "0", *found), env=self._base_env(),
                           capture_output=True, timeout=300)
        if mine and self._workdirs is not None:
            shutil.rmtree(self._workdirs, ignore_errors=True)
            self._workdirs = None
        elif not mine:
            self._remove_dead_workdirs()
        return [t for t in found.values() if t]

    @staticmethod
    def _remove_dead_workdirs() -> None:
        """The private directories of operator processes that died without cleaning up (ours only)."""
        for d in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
            try:
                st = d.lstat()
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                owner = (d / ".owner").read_text()
            except OSError:
                continue
            if not owner_alive(owner):
                shutil.rmtree(d, ignore_errors=True)


def make_runtime(name: str, limits: Limits = Limits()) -> Runtime:
    if name == "podman":
        return PodmanRuntime(limits=limits)
    if name == "host":
        return HostRuntime(limits)
    raise ValueError(f"unknown runtime {name!r}: use podman (sandboxed containers) or host (development only)")


RUNTIMES: Sequence[str] = ("podman", "host")
