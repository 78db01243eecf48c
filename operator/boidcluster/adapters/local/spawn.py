"""How the local backend starts an attempt's process, and the process handle it reaps.

Why: starting a unit is the backend's hot path. The bounds a started process must have (its own
session, the parent-death signal, the output file-size limit, a working directory, nothing of
the operator's descriptors) need code between fork and exec. `preexec_fn` forks the whole
operator and is unsafe with threads; wrapping the command in `setpriv --pdeathsig KILL` and
`prlimit --fsize` costs two more execs of dynamically linked programs (measured ~190 launches/s
against ~1,500/s for bare `true` on this machine). So a 50-line C helper (boid_exec.c) does all of
it; it is compiled once per machine and user on first use (`cc -O2 -static`, cached under
$XDG_CACHE_HOME/boid, keyed by the source's hash) and started with `os.posix_spawn` (a vfork-like
clone: no copy of the operator's memory). Without a C compiler the backend falls back to the
setpriv + prlimit wrappers with the same bounds, slower, and logs that once.

`Proc` replaces subprocess.Popen: exactly one owner (the backend's event loop) reaps it, and a
group signal is sent under the same lock as the reaping, so a reaped leader's pid (which the
kernel may give to a new process) is never signalled.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("boid_exec.c")
_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
# Python ignores these; a unit gets the defaults (SIGXFSZ: a write over the file-size limit kills it).
_RESET_SIGNALS = tuple(s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)) if s)

_helper_mu = threading.Lock()
_helper: list[str | None] = []   # [path or None] once decided in this process


class _Untrusted(OSError):
    """A cache path another user could have written: never executed."""


def _owned(path: Path, kind: int) -> os.stat_result:
    st = os.lstat(path)
    if stat.S_IFMT(st.st_mode) != kind or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise _Untrusted(f"{path} is not a {'directory' if kind == stat.S_IFDIR else 'file'} "
                         "owned and only writable by this user")
    return st


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "boid"
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _owned(d, stat.S_IFDIR)
        return d
    except OSError as e:   # no usable home: a private directory for this process
        log.info("local backend: cache %s unusable (%s): building boid-exec in a private directory", d, e)
        tmp = Path(tempfile.mkdtemp(prefix="boid-exec-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        return tmp


def _build() -> str:
    src = SOURCE.read_bytes()
    target = _cache_dir() / f"boid-exec-{hashlib.sha256(src).hexdigest()[:16]}"
    try:
        _owned(target, stat.S_IFREG)
        return str(target)
    except FileNotFoundError:
        pass
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler: apt-get install gcc libc6-dev")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        errors = ""
        for flags in (["-static"], []):   # static: no dynamic loader work per launch (libc.a from libc6-dev)
            r = subprocess.run([cc, "-O2", *flags, "-o", str(tmp), str(SOURCE)], capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0:
                break
            errors = r.stderr.strip()[-300:]
        else:
            raise OSError(f"{cc} could not build {SOURCE.name}: {errors}")
        os.chmod(tmp, 0o700)
        r = subprocess.run([str(tmp), str(os.getpid()), "-", "-", "true"], capture_output=True, timeout=30,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if r.returncode != 0:
            raise OSError(f"the built helper does not run here (exit {r.returncode}): "
                          f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        os.replace(tmp, target)   # atomic: a concurrent builder's result is identical
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(target)


def exec_helper() -> str | None:
    """The boid-exec binary (built on first use), or None when it cannot be built here."""
    with _helper_mu:
        if not _helper:
            try:
                _helper.append(_build())
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("local backend: no boid-exec helper (%s); attempts start through setpriv and "
                            "prlimit instead (same bounds, several times slower)", e)
                _helper.append(None)
        return _helper[0]


class Proc:
    """An attempt's leader process (its pid is also its process group and session id)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None   # like Popen's: -N when killed by signal N
        self._popen = popen                  # the fallback's Popen, kept so it never reaps on its own
        self._mu = threading.Lock()
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def reap(self) -> int | None:
        """Collect the exit status if the process ended (never blocks); the owner's call only."""
        with self._mu:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:   # reaped behind our back (SIGCHLD ignored): status unknown
                    log.error("local backend: process %d was reaped elsewhere; its exit status is lost", self.pid)
                    pid, status = self.pid, 255 << 8
                if pid == 0:
                    return None
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._popen is not None:
                    self._popen.returncode = self.returncode
        self._done.set()
        return self.returncode

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group, unless the leader was reaped (its pid may be reused)."""
        with self._mu:
            if self.returncode is None:
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def spawn(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None, fsize: int | None,
          stdout: int, stderr: int, helper: str | None = None) -> Proc:
    """Start `argv` in its own session with stdin /dev/null, the given stdout/stderr descriptors,
    exactly `env`, the parent-death signal (SIGKILL) and, with `fsize`, RLIMIT_FSIZE = fsize."""
    if cwd is not None and not os.path.isabs(cwd):
        raise ValueError(f"working directory {cwd} must be absolute")
    if helper is not None:
        args = [helper, str(os.getpid()), "-" if fsize is None else str(int(fsize)),
                "-" if cwd is None else os.fspath(cwd), *argv]
        pid = os.posix_spawn(helper, args, dict(env), setsid=True, setsigmask=(), setsigdef=_RESET_SIGNALS,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)])
        return Proc(pid)
    wrapped = list(argv)
    if fsize is not None and _PRLIMIT:
        wrapped = [_PRLIMIT, f"--fsize={int(fsize)}:{int(fsize)}", "--", *wrapped]
    if _SETPRIV:
        wrapped = [_SETPRIV, "--pdeathsig", "KILL", "--", *wrapped]
    p = subprocess.Popen(wrapped, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         start_new_session=True)
    return Proc(p.pid, popen=p)
