"""How the local backend starts an attempt's process, and the process handle it reaps.

Why: starting a unit is the backend's hot path. The bounds a started process must have (its own
session, the parent-death signal, the output file-size limit, a working directory, no descriptor
of the operator's) need code between fork and exec. `preexec_fn` forks the whole operator and is
unsafe with threads; wrapping the command in `setpriv --pdeathsig KILL` and `prlimit --fsize`
costs two more execs (measured ~190 launches/s against ~1,500/s for bare `true` here), and even
one small static helper halves the rate under load. So `boid_spawn.c` vforks and applies the
bounds with a few system calls before the one exec; it is compiled once per machine and user on
first use (`cc -O2 -shared`, cached under $XDG_CACHE_HOME/boid, keyed by the source's hash, only
loaded if owned and writable by this user alone) and called through ctypes, which releases the
GIL, so several launcher threads start attempts at once. Without a C compiler the backend falls
back to the setpriv + prlimit wrappers with the same bounds, slower, and logs that once.

`Proc` replaces subprocess.Popen: exactly one owner (the backend's io loop) reaps it, and a group
signal is sent under the same lock as the reaping, so a reaped leader's pid (which the kernel may
give to a new process) is never signalled.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("boid_spawn.c")
_SETPRIV = shutil.which("setpriv")
_PRLIMIT = shutil.which("prlimit")
_STAGES = {1: "vfork", 2: "open /dev/null as stdin", 3: "redirect stdout and stderr", 4: "setsid",
           5: "set the parent-death signal", 6: "set the file-size limit", 7: "enter the working directory",
           9: "make the output pipes"}

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

_helper_mu = threading.Lock()
_helper: list[Spawner | None] = []   # [the library or None] once decided in this process


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


class Spawner:
    """The compiled boid_spawn library."""

    def __init__(self, path: str) -> None:
        self.path = path
        lib = ctypes.CDLL(path, use_errno=False)
        self._fn = lib.boid_spawn
        strings = ctypes.POINTER(ctypes.c_char_p)
        self._fn.argtypes = [strings, strings, strings, ctypes.c_char_p, ctypes.c_longlong, ctypes.c_int,
                             ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        self._fn.restype = ctypes.c_int
        self._launch = lib.boid_launch
        self._launch.argtypes = [strings, strings, strings, ctypes.c_char_p, ctypes.c_longlong, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        self._launch.restype = ctypes.c_int
        self._epoll_add = lib.boid_epoll_add
        self._epoll_add.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self._epoll_add.restype = ctypes.c_int
        self._epoll_close = lib.boid_epoll_close
        self._epoll_close.argtypes = [ctypes.c_int, ctypes.c_int]
        self._epoll_close.restype = ctypes.c_int
        self._paths: dict[tuple[str, str | None], list[bytes]] = {}   # (command, PATH) -> candidates

    def _candidates(self, exe: str, path: str | None) -> list[bytes]:
        """Where execve looks for `exe`, like execvp (cached: the same few commands run again and again)."""
        key = (exe, path)
        found = self._paths.get(key)
        if found is None:
            raw = os.fsencode(exe)
            dirs = (path if path is not None else os.defpath).split(os.pathsep)
            found = [raw] if b"/" in raw else [os.path.join(os.fsencode(d or "."), raw) for d in dirs]
            if len(self._paths) < 1024:
                self._paths[key] = found
        return found

    def _args(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, fsize: int | None) -> tuple:
        def strings(items: Sequence[bytes]) -> ctypes.Array:
            return (ctypes.c_char_p * (len(items) + 1))(*items, None)
        def enc(s: str) -> bytes:
            return s.encode(_FS_ENCODING, _FS_ERRORS)   # os.fsencode, without its per-call checks
        paths = self._candidates(argv[0], env.get("PATH"))
        envp = [enc(f"{k}={v}") for k, v in env.items()]
        return (strings(paths), strings([enc(a) for a in argv]), strings(envp),
                None if cwd is None else os.fsencode(cwd), -1 if fsize is None else int(fsize))

    @staticmethod
    def _failed(argv: Sequence[str], err: ctypes.Array) -> OSError:
        if err[0] == 8:   # the exec: like Popen's FileNotFoundError / PermissionError
            return OSError(err[1], os.strerror(err[1]), argv[0])
        return OSError(err[1], f"{_STAGES.get(err[0], 'spawn')}: {os.strerror(err[1])}")

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, fsize: int | None,
                 stdout: int, stderr: int) -> int:
        err = (ctypes.c_int * 2)()
        pid = self._fn(*self._args(argv, env, cwd, fsize), stdout, stderr, os.getpid(), err)
        if pid < 0:
            raise self._failed(argv, err)
        return pid

    def launch(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
               fsize: int | None) -> tuple[int, int, int, int | None]:
        """(pid, stdout read end, stderr read end, pidfd or None): pipes, start and pidfd in one
        C call (the read ends close-on-exec and non-blocking)."""
        err, fds = (ctypes.c_int * 2)(), (ctypes.c_int * 3)()
        pid = self._launch(*self._args(argv, env, cwd, fsize), os.getpid(), err, fds)
        if pid < 0:
            raise self._failed(argv, err)
        return pid, fds[0], fds[1], None if fds[2] < 0 else fds[2]

    def epoll_close(self, epfd: int, fd: int) -> None:
        """Unregister `fd` from the epoll instance and close it, in one C call."""
        code = self._epoll_close(epfd, fd)
        if code:
            raise OSError(code, f"closing a watched descriptor: {os.strerror(code)}")

    def epoll_add(self, epfd: int, fds: Sequence[int]) -> None:
        """Register `fds` with the epoll instance for input, in one C call."""
        arr = (ctypes.c_int * len(fds))(*fds)
        code = self._epoll_add(epfd, arr, len(fds))
        if code:
            raise OSError(code, f"epoll_ctl: {os.strerror(code)}")


def _build() -> Spawner:
    src = SOURCE.read_bytes()
    target = _cache_dir() / f"libboidspawn-{hashlib.sha256(src).hexdigest()[:16]}.so"
    try:
        _owned(target, stat.S_IFREG)
        return Spawner(str(target))
    except FileNotFoundError:
        pass
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler: apt-get install gcc libc6-dev")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise OSError(f"{cc} could not build {SOURCE.name}: {r.stderr.strip()[-300:]}")
        os.chmod(tmp, 0o700)
        lib = Spawner(str(tmp))
        r_fd, w_fd = os.pipe()
        out = _above_stdio(w_fd)
        try:   # it must run here: start `true` once
            pid = lib(["true"], {"PATH": os.environ.get("PATH", os.defpath)}, None, None, out, out)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        finally:
            for fd in {r_fd, w_fd, out}:
                os.close(fd)
        if code != 0:
            raise OSError(f"the built {SOURCE.name} does not start `true` here (exit {code})")
        os.replace(tmp, target)   # atomic: a concurrent builder's result is identical
    finally:
        if tmp.exists():
            tmp.unlink()
    return Spawner(str(target))


def exec_helper() -> Spawner | None:
    """The compiled spawner (built on first use), or None when it cannot be built here."""
    with _helper_mu:
        if not _helper:
            try:
                _helper.append(_build())
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("local backend: no compiled spawner (%s); attempts start through setpriv and "
                            "prlimit instead (same bounds, several times slower)", e)
                _helper.append(None)
        return _helper[0]


def _above_stdio(fd: int) -> int:
    return fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


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
          stdout: int, stderr: int, helper: Spawner | None = None) -> Proc:
    """Start `argv` in its own session with stdin /dev/null, the given stdout/stderr descriptors,
    exactly `env`, the parent-death signal (SIGKILL, when the calling thread ends) and, with
    `fsize`, RLIMIT_FSIZE = fsize. OSError if it could not start (nothing is left running)."""
    if cwd is not None and not os.path.isabs(cwd):
        raise ValueError(f"working directory {cwd} must be absolute")
    if not argv:
        raise ValueError("no command")
    if helper is not None:
        out, err = _above_stdio(stdout), _above_stdio(stderr)
        try:
            return Proc(helper(argv, env, None if cwd is None else os.fspath(cwd), fsize, out, err))
        finally:
            for mine, given in ((out, stdout), (err, stderr)):
                if mine != given:
                    os.close(mine)
    wrapped = list(argv)
    if fsize is not None and _PRLIMIT:
        wrapped = [_PRLIMIT, f"--fsize={int(fsize)}:{int(fsize)}", "--", *wrapped]
    if _SETPRIV:
        wrapped = [_SETPRIV, "--pdeathsig", "KILL", "--", *wrapped]
    p = subprocess.Popen(wrapped, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         start_new_session=True)
    return Proc(p.pid, popen=p)


def spawn_piped(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None, fsize: int | None,
                helper: Spawner | None = None) -> tuple[Proc, int, int, int | None]:
    """`spawn` with the attempt's own stdout and stderr pipes: (process, stdout read end, stderr
    read end, pidfd or None), the read ends non-blocking. With the compiled helper it is one C
    call; without it the same, step by step. OSError if it could not start (nothing left open)."""
    if cwd is not None and not os.path.isabs(cwd):
        raise ValueError(f"working directory {cwd} must be absolute")
    if not argv:
        raise ValueError("no command")
    if helper is not None:
        pid, r_out, r_err, pidfd = helper.launch(argv, env, None if cwd is None else os.fspath(cwd), fsize)
        return Proc(pid), r_out, r_err, pidfd
    fds: list[int] = []
    try:
        r_out, w_out = os.pipe()
        fds += [r_out, w_out]
        r_err, w_err = os.pipe()
        fds += [r_err, w_err]
        proc = spawn(argv, env, cwd=cwd, fsize=fsize, stdout=w_out, stderr=w_err)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (w_out, w_err):   # the child's copies: the pipes end when it (and its children) do
        os.close(fd)
    for fd in (r_out, r_err):
        os.set_blocking(fd, False)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)   # the leader is not reaped before its owner reaps it
    except (OSError, AttributeError):   # a kernel before 5.3
        pidfd = None
    return proc, r_out, r_err, pidfd
