"""A real standalone ZooKeeper as a child process, for `boidctl up`, the tests and the benchmarks.

ZooKeeper is the operator's API server, and the Debian package gives a real 3.8 server, so the
embedded local world and the test suite run the real thing instead of a fake. This module only
knows how to start it on loopback (a free port, its own data directory), wait until it answers
`ruok` with `imok`, stop it by PID, and restart it on the same port and data so that clients keep
their sessions across a restart (tests use that to exercise reconnection). The server holds an
flock on `zookeeper.lock` in its state directory (see lock.py), so two servers never share data.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import lock

JAVA_DIR = Path("/usr/share/java")
# Checked in notes/environment.md: these two jars are enough for a standalone server.
DEFAULT_CLASSPATH = (JAVA_DIR / "zookeeper.jar", JAVA_DIR / "slf4j-nop.jar")
# The TLS port (secureClientPort) needs the Netty connection factory (Debian's libnetty-java).
NETTY_CLASSPATH = tuple(JAVA_DIR / f"netty-{j}.jar" for j in (
    "buffer", "codec", "common", "handler", "resolver", "transport", "transport-native-epoll",
    "transport-native-unix-common"))
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
LOOPBACK = "127.0.0.1"


class LocalZooKeeperError(RuntimeError):
    """The local server cannot be started (missing java/jar, crash, not ready in time)."""


@dataclass(frozen=True)
class ZooKeeperStatus:
    running: bool  # our child process is alive
    healthy: bool  # it answers `ruok` with `imok` and `srvr` with its mode (serving sessions)
    pid: int | None
    hosts: str
    state_dir: str


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def four_letter_word(port: int, word: str = "ruok", timeout: float = 1.0, host: str = LOOPBACK) -> str:
    """Send a ZooKeeper four-letter command and return the answer ('' if unreachable)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_live: "weakref.WeakSet[LocalZooKeeper]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for zk in list(_live):
        try:
            zk.stop()
        except Exception:  # best effort at interpreter exit
            pass


class LocalZooKeeper:
    """One standalone ZooKeeper server bound to 127.0.0.1.

    `state_dir` holds zoo.cfg, the data and the server's log (a temporary directory, removed
    by `close()`, when None). `port` defaults to a free port chosen once, so `restart()`
    comes back on the same address with the same data. `fsync=False` turns off the
    transaction log fsync (tests and benchmarks; never for data you care about).
    `die_with_parent=True` makes the kernel stop the server if the starting thread dies
    (start it from a long-lived thread).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        java: str = "java",
        classpath: tuple[Path, ...] = DEFAULT_CLASSPATH,
        heap: str = "256m",
        tick_time_ms: int = 2000,
        fsync: bool = True,
        die_with_parent: bool = False,
        startup_timeout: float = 30.0,
        tls: tuple[Path, Path] | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="boid-zk-"))
        self.port = port or free_port()
        self.java = java
        self.classpath = classpath
        self.heap = heap
        self.tick_time_ms = tick_time_ms
        self.fsync = fsync
        self.die_with_parent = die_with_parent
        self.startup_timeout = startup_timeout
        # (server key + certificate PEM, CA PEM): also serve TLS on secure_port (client certs optional)
        self.tls = tls
        self.secure_port = free_port() if tls else None
        if tls:
            self.classpath = (*classpath, *NETTY_CLASSPATH)
        # {user: password}: every session must log in with SASL DIGEST-MD5 as one of them
        # (JAAS DigestLoginModule; the passwords go to a 0600 file, never the command line)
        self.sasl_users = dict(sasl_users) if sasl_users else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- addresses ---------------------------------------------------------------------------
    @property
    def hosts(self) -> str:
        """The kazoo connection string, e.g. '127.0.0.1:2181'."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def secure_hosts(self) -> str:
        """The TLS connection string (only with `tls`)."""
        if self.secure_port is None:
            raise LocalZooKeeperError("this server was started without tls=")
        return f"{LOOPBACK}:{self.secure_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "zookeeper.log"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "zookeeper.lock"

    def exit_code(self) -> int | None:
        """The exit code of our server once it has died (None while it runs or if never started).

        Polling also reaps the dead child, so no zombie is left behind."""
        return self._proc.poll() if self._proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_installed(self) -> str:
        java = shutil.which(self.java)
        if java is None:
            raise LocalZooKeeperError(
                f"java not found on PATH (looked for {self.java!r}): run `make setup` "
                "(installs default-jre-headless and zookeeper)"
            )
        missing = [str(p) for p in self.classpath if not p.exists()]
        if missing:
            raise LocalZooKeeperError(
                f"ZooKeeper jars missing: {', '.join(missing)}: run `make setup` "
                "(installs the Debian zookeeper package)"
            )
        return java

    def _write_config(self) -> Path:
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.state_dir / "zoo.cfg"
        lines = [
            f"tickTime={self.tick_time_ms}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            f"clientPortAddress={LOOPBACK}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "maxClientCnxns=0",
            f"forceSync={'yes' if self.fsync else 'no'}",
            "preAllocSize=4096",
        ]
        if self.tls:
            keystore, truststore = self.tls
            lines += [
                f"secureClientPort={self.secure_port}",
                f"secureClientPortAddress={LOOPBACK}",
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"ssl.keyStore.location={keystore}",
                "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={truststore}",
                "ssl.trustStore.type=PEM",
                "ssl.clientAuth=want",
            ]
        if self.sasl_users:
            lines += [
                "authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider",
                "enforce.auth.enabled=true",      # no operation before a SASL login (3.7+)
                "enforce.auth.schemes=sasl",
            ]
            self._write_jaas()
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    @property
    def jaas_path(self) -> Path:
        return self.state_dir / "jaas.conf"

    def _write_jaas(self) -> None:
        """The server's JAAS login config (DigestLoginModule, user_<name>="<password>"), mode 0600."""
        assert self.sasl_users
        for user, password in self.sasl_users.items():
            if not user.replace("-", "").replace("_", "").replace(".", "").isalnum() or '"' in password \
                    or "\\" in password or "\n" in password:
                raise LocalZooKeeperError(f"SASL user {user!r}: names are letters, digits, '-', '_', '.'; "
                                          "passwords hold no quotes, backslashes or newlines")
        body = "".join(f'    user_{u}="{pw}"\n' for u, pw in self.sasl_users.items())
        text = f"Server {{\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n{body}    ;\n}};\n"
        fd = os.open(self.jaas_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(self.jaas_path, 0o600)

    def start(self) -> "LocalZooKeeper":
        """Start the server (no-op if running) and wait until it answers `imok` and serves."""
        if self.pid is not None:
            return self
        java = self._check_installed()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock_fd = lock.acquire(self.lock_path)
        except lock.DirectoryBusy as e:
            who = f" (pid {e.holder['pid']})" if e.holder.get("pid") else ""
            raise LocalZooKeeperError(f"another ZooKeeper{who} already serves the data of {self.state_dir}; "
                                      "stop it first (two servers on one data directory corrupt it)") from None
        try:
            self._spawn(java, lock_fd)
        finally:
            os.close(lock_fd)  # the server holds the lock now (or nobody, if it did not start)
        return self._wait_serving()

    def _spawn(self, java: str, lock_fd: int) -> None:
        cfg = self._write_config()
        if four_letter_word(self.port, timeout=0.2):
            raise LocalZooKeeperError(f"port {self.port} on {LOOPBACK} is already served by another process")
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-Dzookeeper.admin.enableServer=false",
            *([f"-Djava.security.auth.login.config={self.jaas_path}"] if self.sasl_users else []),  # a path
            "-cp",
            ":".join(str(p) for p in self.classpath),
            MAIN_CLASS,
            str(cfg),
        ]
        self._close_log()  # the log of a server that died
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.state_dir,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            preexec_fn=_die_with_parent if self.die_with_parent else None,
            pass_fds=(lock_fd,),  # the server holds the data directory's lock while it lives
        )
        lock.record(lock_fd, {"pid": self._proc.pid, "port": self.port})
        _live.add(self)

    def _wait_serving(self) -> "LocalZooKeeper":
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close_log()
                raise LocalZooKeeperError(
                    f"ZooKeeper exited with code {code} during start-up; log {self.log_path}:\n{self._log_tail()}"
                )
            if self._serving():
                return self
            time.sleep(0.05)
        self.stop()
        raise LocalZooKeeperError(
            f"ZooKeeper on {self.hosts} did not answer `ruok` within {self.startup_timeout:.0f}s; "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop our server: SIGTERM by PID, wait, SIGKILL if it does not exit. Data is kept."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._close_log()
        _live.discard(self)

    def restart(self) -> "LocalZooKeeper":
        """Stop and start again on the same port and data directory (sessions survive)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the state directory if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> ZooKeeperStatus:
        pid = self.pid
        return ZooKeeperStatus(
            running=pid is not None,
            healthy=self._serving(),
            pid=pid,
            hosts=self.hosts,
            state_dir=str(self.state_dir),
        )

    def __enter__(self) -> "LocalZooKeeper":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalZooKeeper(hosts={self.hosts!r}, pid={self.pid}, state_dir={str(self.state_dir)!r})"

    # -- helpers -----------------------------------------------------------------------------
    def _serving(self) -> bool:
        # `imok` only says the process is up; for a few hundred ms after it the server still
        # drops sessions ("not currently serving requests"), so also wait for `srvr` to report a Mode.
        return four_letter_word(self.port, timeout=0.5) == "imok" and "Mode:" in four_letter_word(
            self.port, "srvr", timeout=0.5)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
