"""The embedded cluster's supervisor (`boidctl cluster serve`, started by `boidctl up`) and
`boidctl status`.

Why it is shaped so: ZooKeeper, the chain node and the operator are three child processes of one
supervisor, so any of them can die (kill -9, OOM, a crash) without taking the others along, and
the supervisor brings it back with backoff on the same port and the same data: clients keep
their address (kazoo reconnects, the operator's RPC client retries), ZooKeeper keeps its
snapshots, the node replays its own block log. Every child holds an flock on its data dir
(adapters/local/lock.py), so a restart never doubles a server. The supervisor is a child
subreaper and reaps every child, so a dead process never lingers as a zombie. What it sees is
written to $BOID_HOME/cluster.json (one record per component) for `boidctl up` and
`boidctl status`; what it does goes to cluster.log.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from boidcluster.adapters.local import lock

from .auth import secure_embedded
from .context import Failure, friendly, read_cluster
from .wiring import storage_root

log = logging.getLogger("boidcluster.supervisor")

DEMO_SLOTS = ("alice", "bob", "carol")
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before the 1st, 2nd, ... restart attempt of a component that keeps failing."""
STABLE_AFTER = 60.0
"""A component up this long has its failure count (and so its backoff) reset."""
PROBE_EVERY = 5.0
HUNG_AFTER = 60.0
"""A live process that has not answered its health probe for this long is restarted."""
PR_SET_CHILD_SUBREAPER = 36


def signal_name(code: int | None) -> str:
    if code is None:
        return "gone"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def kept_port(state: Path, name: str) -> int:
    """A port chosen once per $BOID_HOME and reused on every (re)start, so addresses stay put."""
    f = state / f"{name}.port"
    try:
        return int(f.read_text())
    except (OSError, ValueError):
        from boidcluster.adapters.local.zookeeper import free_port

        port = free_port()
        f.write_text(str(port))
        return port


def dashboard_port(state: Path) -> int:
    """The dashboard's port: the usual one (8090) when it is free the first time, then kept."""
    from .dashboard import DEFAULT_PORT

    f = state / "dashboard.port"
    if not f.exists():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", DEFAULT_PORT))
                port = DEFAULT_PORT
            except OSError:
                port = 0
        if port:
            f.write_text(str(port))
    return kept_port(state, "dashboard")


# -- the components ----------------------------------------------------------------------------
class ZooKeeperChild:
    name = "zookeeper"

    def __init__(self, state: Path) -> None:
        from boidcluster.adapters.local.zookeeper import LocalZooKeeper

        self.zk = LocalZooKeeper(state / "zookeeper", port=kept_port(state, "zookeeper"), die_with_parent=True)

    @property
    def address(self) -> str:
        return self.zk.hosts

    def start(self) -> None:
        self.zk.start()

    def died(self) -> str | None:
        code = self.zk.exit_code()
        return None if code is None else signal_name(code)

    @property
    def pid(self) -> int | None:
        return self.zk.pid

    def probe(self) -> bool:
        return self.zk.status().healthy

    def stop(self) -> None:
        self.zk.stop()


class ChainChild:
    name = "chain"

    def __init__(self, state: Path) -> None:
        from boidcluster.adapters.local.chainnode import LocalChain

        self.state = state
        self.chain = LocalChain(state / "chain", die_with_parent=True)
        self.url = ""

    @property
    def address(self) -> str:
        return self.url

    def start(self) -> None:
        self.url = self.chain.start()
        self.chain.bootstrap()  # idempotent; restores what a replay lost (reversible blocks)
        self.chain.operator_keys().write(self.state / "operator-keys.json")
        self.chain.write_user_keys(self.state / "user-keys.json")  # the demo users' own key (boidctl fund/withdraw)

    def died(self) -> str | None:
        code = self.chain.exit_code()
        if code is not None:
            return signal_name(code)
        if self.chain.pid is None:  # a node we adopted (not our child) is gone
            return "gone"
        return None

    @property
    def pid(self) -> int | None:
        return self.chain.pid

    def probe(self) -> bool:
        try:
            return httpx.post(f"{self.url}/v1/chain/get_info", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.chain.stop()


class OperatorChild:
    """`boidctl operator run` with the local backend, as its own process."""

    name = "operator"

    def __init__(self, state: Path, zk: str, chain: ChainChild, slots: list[str], runtime: str) -> None:
        self.state, self.zk, self.chain, self.slots, self.runtime = state, zk, chain, slots, runtime
        self.port = kept_port(state, "operator-health")
        self.dashboard_port = dashboard_port(state)
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.storage = storage_root(state)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "boidcluster.cli.main", "--zk", self.zk,
                "--context", "operator@local",   # its own identity, not the human's admin@local
                "operator", "run",
                "--storage", self.storage, "--chain-url", self.chain.url,
                "--keys", str(self.state / "operator-keys.json"), "--backend", "local",
                *[x for s in self.slots for x in ("--slot", s)],
                "--dispatcher-account", self.chain.chain.accounts.dispatchers[0],
                "--health-port", str(self.port), "--dashboard-port", str(self.dashboard_port),
                "--runtime", self.runtime, "--slot-report", str(self.slot_report)]

    @property
    def slot_report(self) -> Path:
        return self.state / "slots.json"

    def slot_lines(self) -> list[str]:
        """Each local slot's self-test result, as the operator wrote it at its start."""
        try:
            return json.loads(self.slot_report.read_text())
        except (OSError, ValueError):
            return []

    def start(self, timeout: float = 60.0) -> None:
        self.slot_report.unlink(missing_ok=True)  # written afresh by this start
        with open(self.state / "operator.log", "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator {signal_name(self.proc.returncode)} while starting; "
                                   f"see {self.state / 'operator.log'}")
            if self.probe() and self.slot_report.exists():  # the report follows the health server
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the operator did not answer on {self.address}/healthz within {timeout:.0f}s")

    def died(self) -> str | None:
        if self.proc is None:
            return "gone"
        code = self.proc.poll()
        return None if code is None else signal_name(code)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def probe(self) -> bool:
        try:
            return httpx.get(f"{self.address}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _die_with_parent() -> None:  # in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- what is recorded about each ---------------------------------------------------------------
@dataclass
class ComponentHealth:
    """One component as cluster.json and `boidctl status` show it."""

    state: str = "starting"  # starting | running | restarting | unhealthy | stopped
    pid: int | None = None
    address: str = ""
    restarts: int = 0
    last_exit: str = ""  # why it last died, e.g. "killed by SIGKILL"
    since: float = field(default_factory=time.time)  # wall time of the last state change
    message: str = ""
    failures: int = 0  # consecutive deaths or failed starts (backoff)
    next_try: float = 0.0  # monotonic time of the next start attempt
    probed: float = 0.0  # monotonic time of the last health probe
    unhealthy_since: float = 0.0

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        for private in ("next_try", "probed", "unhealthy_since"):
            d.pop(private)
        return d


class Supervisor:
    """Starts the components in order, then watches them and restarts any that dies."""

    def __init__(self, state: Path, slots: list[str], runtime: str = "podman") -> None:
        self.state = state
        self.slots = slots
        self.runtime = runtime
        self.info: dict[str, Any] = {"pid": os.getpid(), "state": str(state), "phase": "starting ZooKeeper",
                                     "ready": False, "components": {}}
        self.children: list[Any] = []
        self.health: dict[str, ComponentHealth] = {}
        self.stopping = threading.Event()

    # -- bookkeeping --
    def write(self) -> None:
        self.info["components"] = {n: h.public() for n, h in self.health.items()}
        tmp = self.state / "cluster.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2))
        tmp.replace(self.state / "cluster.json")

    def _set(self, child: Any, state: str, message: str = "") -> None:
        h = self.health[child.name]
        h.state, h.message, h.since = state, message, time.time()
        h.pid, h.address = child.pid, child.address

    # -- start-up --
    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            self._start_all()
            self.info.update(phase="running", ready=True)
            self.write()
            while not self.stopping.wait(0.5):
                self.tick()
        except Exception as e:
            self.info.update(phase="failed", ready=False, error=str(e))
            self.write()
            raise
        finally:
            for child in reversed(self.children):
                try:
                    child.stop()
                except Exception:  # stop the rest whatever one of them does
                    log.exception("stopping %s", child.name)
            self.reap()
            if self.info.get("phase") != "failed":
                (self.state / "cluster.json").unlink(missing_ok=True)

    def _start_all(self) -> None:
        zk = ZooKeeperChild(self.state)
        self._first_start(zk, "starting ZooKeeper")
        self.info["zk"] = zk.address
        secure_embedded(self.state, zk.address, tuple(self.slots))  # operator@local, admin@local, users
        chain = ChainChild(self.state)
        self._first_start(chain, "starting the chain node and bootstrapping it (contracts, token, demo accounts)")
        self.info["chain"] = chain.url
        op = OperatorChild(self.state, zk.address, chain, self.slots, self.runtime)
        self._first_start(op, "starting the operator")
        self.info.update(storage=op.storage, slots=self.slots, health=op.address, dashboard=op.dashboard,
                         runtime=self.runtime, workers=op.slot_lines())

    def _first_start(self, child: Any, phase: str) -> None:
        self.health[child.name] = ComponentHealth(address=child.address)
        self.info["phase"] = phase
        self.write()
        self.children.append(child)
        child.start()
        self._set(child, "running")
        log.info("%s running (pid %s) at %s", child.name, child.pid, child.address)

    # -- healing --
    def tick(self) -> None:
        """One look at every component: notice the dead (or hung) ones, restart them after their backoff."""
        changed = False
        for child in self.children:
            changed |= self._watch(child, self.health[child.name])
        ready = all(h.state in ("running", "unhealthy") for h in self.health.values())
        if ready != self.info.get("ready"):
            self.info.update(ready=ready, phase="running" if ready else "repairing")
            changed = True
        self.reap()
        if changed:
            self.write()

    def _watch(self, child: Any, h: ComponentHealth) -> bool:
        now = time.monotonic()
        if h.state in ("running", "unhealthy"):
            why = child.died()
            if why is None and now - h.probed >= PROBE_EVERY:
                h.probed = now
                ok = child.probe()
                if ok and h.state == "unhealthy":
                    self._set(child, "running")
                    return True
                if not ok and h.state == "running":
                    h.unhealthy_since = now
                    self._set(child, "unhealthy", "not answering its health probe")
                    return True
                if not ok and now - h.unhealthy_since > HUNG_AFTER:
                    why = f"not answering for {HUNG_AFTER:.0f}s"
                    child.stop()
            if why is None:
                if h.failures and time.time() - h.since > STABLE_AFTER:
                    h.failures = 0
                return False
            h.restarts += 1
            h.failures += 1
            h.last_exit = why
            h.next_try = now + BACKOFF[min(h.failures, len(BACKOFF)) - 1]
            self._set(child, "restarting", f"{why}; restarting in {h.next_try - now:.0f}s "
                                           f"(restart {h.restarts}) on the same port")
            log.warning("%s %s: restarting it in %.0fs (restart %d)", child.name, why, h.next_try - now, h.restarts)
            return True
        if h.state == "restarting" and now >= h.next_try:
            self._set(child, "restarting", f"starting again (last exit: {h.last_exit}; restart {h.restarts})")
            self.write()
            try:
                child.start()
            except Exception as e:  # keep supervising; try again later, visibly
                h.failures += 1
                h.next_try = time.monotonic() + BACKOFF[min(h.failures, len(BACKOFF)) - 1]
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self._set(child, "restarting", f"restart failed ({first}); next try in "
                                               f"{h.next_try - time.monotonic():.0f}s")
                log.warning("%s did not start again: %s", child.name, e)
            else:
                self._set(child, "running", f"restarted (last exit: {h.last_exit})")
                log.warning("%s running again (pid %s) at %s", child.name, child.pid, child.address)
            return True
        return False

    def reap(self) -> None:
        """Reap every dead child we do not poll ourselves (orphans reparented to us, the subreaper)."""
        ours = {c.pid for c in self.children}
        me = os.getpid()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) in ours:
                continue
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == me:
                try:
                    os.waitpid(int(p.name), os.WNOHANG)
                except ChildProcessError:
                    pass


def serve(state: Path, slots: list[str], runtime: str = "podman") -> None:
    """Run the supervisor until SIGTERM; refuses to run twice on one $BOID_HOME."""
    state.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fd = lock.acquire(state / "supervisor.lock")  # held for our whole life, released by the kernel
    except lock.DirectoryBusy as e:
        raise SystemExit(f"another supervisor (pid {e.holder.get('pid')}) already runs the cluster in {state}")
    lock.record(fd, {"pid": os.getpid()})  # not inherited: our children do not keep it alive
    Supervisor(state, slots or list(DEMO_SLOTS), runtime).run()


# -- boidctl status ----------------------------------------------------------------------------
def supervisor_alive(info: dict) -> bool:
    pid = info.get("pid")
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return "cluster\0serve" in cmd and stat[0] != "Z"


def _age(since: float | None) -> str:
    if not since:
        return ""
    s = max(0, int(time.time() - since))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def live_probe(name: str, comp: dict) -> bool:
    """Ask the component itself, not only what the supervisor last wrote."""
    addr = comp.get("address") or ""
    try:
        if name == "zookeeper":
            from boidcluster.adapters.local.zookeeper import four_letter_word

            host, _, port = addr.rpartition(":")
            return four_letter_word(int(port), timeout=1.0, host=host or "127.0.0.1") == "imok"
        if name == "chain":
            return httpx.post(f"{addr}/v1/chain/get_info", timeout=2.0).status_code == 200
        if name == "operator":
            return httpx.get(f"{addr}/healthz", timeout=2.0).status_code == 200
    except (httpx.HTTPError, ValueError, OSError):
        return False
    return False


def cluster_status() -> tuple[bool, list[dict[str, Any]]]:
    """(all healthy, one row per component, the supervisor first)."""
    info = read_cluster()
    alive = supervisor_alive(info)
    rows = [{"component": "supervisor", "health": "healthy" if alive else "down",
             "state": info.get("phase", "not started") if alive else "not running",
             "pid": info.get("pid") if alive else None, "address": info.get("state", ""), "restarts": "",
             "message": info.get("error", "") if info.get("phase") == "failed" else ""}]
    for name, comp in (info.get("components") or {}).items():
        answering = live_probe(name, comp)
        health = "healthy" if answering else "down"
        if answering and alive and comp.get("state") == "unhealthy":
            health = "unhealthy"
        message = comp.get("message", "")
        rows.append({"component": name, "health": health,
                     "state": comp.get("state", "?") if alive else "not supervised",
                     "pid": comp.get("pid"), "address": comp.get("address", ""),
                     "restarts": comp.get("restarts", 0),
                     "message": f"{message} ({_age(comp.get('since'))} ago)" if message else ""})
    ok = alive and len(rows) > 1 and all(r["health"] == "healthy" for r in rows)
    return ok, rows


@click.command("status")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@friendly
def status(output: str) -> None:
    """Health of the embedded cluster: supervisor, ZooKeeper, chain node, operator (exit 1 unless all healthy)."""
    ok, rows = cluster_status()
    if output == "json":
        click.echo(json.dumps({"healthy": ok, "components": rows}, indent=2))
    else:
        if not read_cluster():
            raise Failure("no embedded cluster here (start one with `boidctl up`)")
        cols = ("component", "health", "state", "pid", "restarts", "address", "message")
        table = [[str(r.get(c) if r.get(c) is not None else "") for c in cols] for r in rows]
        widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
        click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
        for t in table:
            click.echo("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    if not ok:
        sys.exit(1)
