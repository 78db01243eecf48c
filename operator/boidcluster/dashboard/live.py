"""The dashboard's live state: one store watch, periodic chain and metrics reads, histories, and
notification of connected browsers.

Why it is shaped so: every browser shares one watch (ZooKeeper sees one client however many tabs
are open); a snapshot is rebuilt when the watch delivers a change (debounced) and every `refresh`
seconds for what has no watch (chain rows, metrics). Subscribers are asyncio queues on the web
server's loop, fed thread-safely. The thread survives any error: an unreachable ZooKeeper is shown
on the page (with what to do) and retried with capped backoff, the last state seen stays visible.
Histories (units/s, payouts, queue depth) are sampled in memory since start, seeded from status
times (a job's start and completion, a protocol's last payout), so they need no extra writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from boidcluster.adapters.store import Store, StoreError, Unauthorized
from boidcluster.model.meta import Resource

from . import readmodel as rm

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.25  # s between rebuilds while the store keeps changing
HISTORY = 720  # samples kept per series (an hour at the default 5 s refresh when idle)


def _now() -> float:
    return time.time()


def _ts(iso_text: str | None) -> float | None:
    if not iso_text:
        return None
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


@dataclass
class Histories:
    jobs: dict[str, deque] = field(default_factory=dict)       # name -> (t, validated)
    payouts: dict[str, deque] = field(default_factory=dict)    # protocol -> (t, paid total amount)
    health: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (t, queue depth, latency ms)
    _rates: dict[str, tuple[Any, list[list[float]]]] = field(default_factory=dict)

    def sample_job(self, view: dict[str, Any], t: float) -> None:
        s = self.jobs.get(view["name"])
        if s is None:
            s = self.jobs[view["name"]] = deque(maxlen=HISTORY)
            start = _ts(view["startTime"])
            if start is not None:
                s.append((start, 0))
            end = _ts(view["completionTime"])
            if end is not None and view["validated"]:
                s.append((end, view["validated"]))
        if not s or s[-1][1] != view["validated"] or (view["phase"] == "Running" and t - s[-1][0] >= 1.0):
            if not s or t > s[-1][0]:
                s.append((t, view["validated"]))

    def sample_payouts(self, view: dict[str, Any], t: float) -> None:
        s = self.payouts.get(view["name"])
        total = view["paidTotal"]["amount"]
        if s is None:
            s = self.payouts[view["name"]] = deque(maxlen=HISTORY)
            last = _ts(view["payout"]["last"])
            if last is not None and total:
                s.append((last, total))
        if not s or s[-1][1] != total:
            s.append((max(t, s[-1][0] if s else t), total))

    def rates(self, name: str) -> list[list[float]]:
        """Units validated per second, as [time, rate] at the end of each window; the series starts
        with [first sample time, 0]. Windows span at least a second (or a quarter of a short run),
        the last one may be shorter, so even a job done in a second shows its rate."""
        samples = self.jobs.get(name, ())
        key = (len(samples), samples[-1]) if samples else None
        hit = self._rates.get(name)
        if hit is not None and hit[0] == key:  # unchanged since the last rebuild
            return hit[1]
        out = self._compute_rates(list(samples))
        self._rates[name] = (key, out)
        return out

    @staticmethod
    def _compute_rates(samples: list[tuple[float, int]]) -> list[list[float]]:
        if len(samples) < 2:
            return []
        window = min(1.0, (samples[-1][0] - samples[0][0]) / 4)
        out, prev = [[samples[0][0], 0.0]], samples[0]
        for i, (t, v) in enumerate(samples[1:], 1):
            dt = t - prev[0]
            if dt > 0 and (dt >= window or i == len(samples) - 1):
                out.append([t, round((v - prev[1]) / dt, 3)])
                prev = (t, v)
        return out


class LiveView:
    """Keeps the dashboard's snapshot current; `subscribe()` for change notifications."""

    def __init__(self, zk: str, *, store: Store | None = None, store_factory: Callable[[], Store] | None = None,
                 chain_url: str | None = None,
                 chain_factory: Callable[[str], Any] | None = None,
                 metrics: Callable[[], str] | None = None, metrics_source: str | None = None,
                 refresh: float = 2.0, timeout: float = 5.0) -> None:
        self.zk, self.chain_url, self.refresh, self.timeout = zk, chain_url, refresh, timeout
        self._store, self._own_store = store, store is None
        # a store of our own is opened (and reopened after a loss) as the caller's identity
        self._store_factory = store_factory or (lambda: Store(zk, timeout=timeout))
        self._chain_factory = chain_factory
        self._chain: Any = None
        self._metrics, self._metrics_source = metrics, metrics_source
        self._objects: dict[str, dict[str, Resource]] = {}
        self._hist = Histories()
        self._views: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._subs: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self.version = 0
        self._last_seen: float | None = None
        self.state: dict[str, Any] = self._compose(None, rm.ChainFacts(url=chain_url), connected=False,
                                                   error=None, synced=False)
        self.state_json = json.dumps(self.state, default=str)
        self._body = ""
        self._thread = threading.Thread(target=self._run, name="boid-dashboard", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "LiveView":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(10)
        with self._mu:
            subs, self._subs = self._subs, []
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(_offer, q, None)
            except RuntimeError:  # loop already closed
                pass
        if self._chain is not None:
            try:
                self._chain.close()
            except Exception:
                pass
        if self._own_store and self._store is not None:
            self._store.close()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- subscribers (called on the web server's event loop) ----------------------------------
    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        with self._mu:
            self._subs.append((asyncio.get_running_loop(), q))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self._mu:
            self._subs = [(lp, x) for lp, x in self._subs if x is not q]

    def _notify(self) -> None:
        with self._mu:
            subs = list(self._subs)
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(_offer, q, self.version)
            except RuntimeError:
                pass

    # -- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff, attempt = 1.0, 0
        while not self._stop.is_set():
            try:
                if self._store is None:
                    attempt += 1
                    self._store = self._store_factory()
                backoff, attempt = 1.0, 0
                self._follow(self._store)
            except StoreError as e:
                if self._own_store and self._store is not None:
                    self._store.close()
                    self._store = None
                if isinstance(e, Unauthorized):  # reached, but the identity is refused: not a start-up problem
                    self._publish_error("identity", str(e), attempt, backoff, hint=(
                        "Check the current context's user and password: `boidctl config current-context`, "
                        "`boidctl config set-credentials USER --password-file FILE`."))
                else:
                    self._publish_error("zookeeper", str(e), attempt, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 15.0)
            except Exception as e:  # never die: show it and try again
                log.exception("dashboard: unexpected error; retrying")
                self._publish_error("internal", f"{type(e).__name__}: {e}", attempt, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 15.0)

    def _follow(self, store: Store) -> None:
        watch = store.watch(None)
        try:
            self._objects = {}
            next_full = last_build = 0.0
            synced = changed = money = False
            while not self._stop.is_set():
                if not watch.alive:
                    raise StoreError("the watch ended")
                # wait for news; while a coalesced change is pending, only until it is due
                wait = 0.2 if not changed else max(0.0, MIN_INTERVAL - (time.monotonic() - last_build))
                ev = watch.get(timeout=wait)
                while ev is not None:
                    kind_objs = self._objects.setdefault(ev.kind, {})
                    if ev.type == "DELETED":
                        kind_objs.pop(ev.name, None)
                    else:
                        kind_objs[ev.name] = ev.obj
                    changed = True
                    money = money or ev.kind in ("Protocol", "Contributor")  # their chain rows may have moved
                    ev = watch.events.get_nowait() if not watch.events.empty() else None
                connected = bool(store.client.connected)
                if connected:
                    self._last_seen = _now()
                    synced = True
                now = time.monotonic()
                # at most one rebuild per MIN_INTERVAL under churn (changes in between are coalesced);
                # after a quiet spell the first change is shown at once
                due = changed and now - last_build >= MIN_INTERVAL
                if due or now >= next_full or self._dirty.is_set():
                    full = now >= next_full or money
                    self._rebuild(store, connected, synced, full=full)
                    last_build = now
                    changed = money = False
                    if full:
                        next_full = now + self.refresh
                    self._dirty.clear()
        finally:
            watch.stop()

    def _job_view(self, job: Any) -> dict[str, Any]:
        """job_view, computed again only when the watch delivered a new object for the job."""
        hit = self._views.get(job.name)
        if hit is None or hit[0] is not job:
            hit = self._views[job.name] = (job, rm.job_view(job))
        return dict(hit[1])

    def _chain_facts(self) -> rm.ChainFacts:
        if not self.chain_url:
            return rm.ChainFacts(url=None, error="no chain configured")
        protocols = list(self._objects.get("Protocol", {}).values())
        try:
            if self._chain is None:
                self._chain = (self._chain_factory or _open_chain)(self.chain_url)
        except Exception as e:  # the node may be down: show it, retry on the next refresh
            return rm.ChainFacts(url=self.chain_url, error=f"{type(e).__name__}: {e}")
        return rm.read_chain(self._chain, self.chain_url, protocols)  # type: ignore[arg-type]

    def _metrics_facts(self) -> rm.MetricsFacts | None:
        if self._metrics is None:
            return None
        try:
            return rm.parse_metrics(self._metrics(), self._metrics_source)
        except Exception as e:
            return rm.MetricsFacts(source=self._metrics_source, error=f"{type(e).__name__}: {e}")

    _facts: rm.ChainFacts | None = None
    _mfacts: rm.MetricsFacts | None = None
    _leader: tuple[str | None, list[str]] = (None, [])
    _lat_prev: tuple[int, float] = (0, 0.0)

    def _rebuild(self, store: Store, connected: bool, synced: bool, *, full: bool) -> None:
        if full or self._facts is None:
            self._facts = self._chain_facts()
            self._mfacts = self._metrics_facts()
            self._sample_health(self._mfacts)
            if connected:
                try:
                    self._leader = rm.read_leader(store.client)
                except Exception as e:
                    log.info("dashboard: reading the leader: %s", e)
        error = None
        if not connected:
            seen = datetime.fromtimestamp(self._last_seen, timezone.utc).strftime("%H:%M:%S UTC") \
                if self._last_seen else "never"
            error = {"kind": "zookeeper-down",
                     "message": f"ZooKeeper at {self.zk} is not answering (last contact {seen}); "
                                "this page shows the last state seen and reconnects by itself.",
                     "hint": "Check that ZooKeeper runs (`boidctl up` starts the embedded cluster)."}
        self._set(self._compose(store, self._facts, connected=connected, error=error, synced=synced))

    def _sample_health(self, m: rm.MetricsFacts | None) -> None:
        """One point per metrics read: queue depth, and reconcile latency over the interval since
        the previous read (from the histogram's running sum and count; None when nothing ran)."""
        if m is None or m.error is not None:
            return
        count = sum(k.count for k in m.latency)
        total = sum(k.mean_s * k.count for k in m.latency)
        prev_count, prev_total = self._lat_prev
        recent = (total - prev_total) / (count - prev_count) if count > prev_count else None
        self._lat_prev = (count, total)
        self._hist.health.append((_now(), m.queue_depth or 0, None if recent is None else round(recent * 1000, 3)))

    def _compose(self, store: Store | None, facts: rm.ChainFacts, *, connected: bool,
                 error: dict[str, Any] | None, synced: bool) -> dict[str, Any]:
        t = _now()
        snap = rm.snapshot(self._objects if synced else {}, facts, self._job_view)
        if len(self._views) > len(snap["jobs"]):  # forget deleted jobs' views
            names = {j["name"] for j in snap["jobs"]}
            self._views = {k: v for k, v in self._views.items() if k in names}
        for j in snap["jobs"]:
            self._hist.sample_job(j, t)
            j["rate"] = self._hist.rates(j["name"])
        for p in snap["protocols"]:
            self._hist.sample_payouts(p, t)
        names = {p["name"] for p in snap["protocols"]}
        snap["payouts"] = [{"protocol": n, "points": [[a, b] for a, b in s]}
                           for n, s in sorted(self._hist.payouts.items()) if n in names]
        for series in snap["payouts"]:
            p = next(p for p in snap["protocols"] if p["name"] == series["protocol"])
            series["symbol"], series["precision"] = p["paidTotal"]["symbol"], p["paidTotal"]["precision"]
        m = self._mfacts
        leader, contenders = self._leader
        snap["health"] = rm.health_view(self.zk, connected, leader, contenders, m)
        snap["health"]["history"] = [list(x) for x in self._hist.health]
        snap["cluster"] = {"zk": self.zk, "connected": connected, "synced": synced, "error": error,
                           "lastSeen": self._last_seen}
        snap["generatedAt"] = t
        return snap

    def _publish_error(self, kind: str, message: str, attempt: int, backoff: float, hint: str | None = None) -> None:
        hint = hint or ("Start the embedded cluster with `boidctl up`, or point the dashboard at your "
                        "ZooKeeper with `--zk HOST:PORT` (or $BOID_ZK).")
        state = dict(self.state)
        state["cluster"] = {"zk": self.zk, "connected": False, "synced": state.get("cluster", {}).get("synced", False),
                            "lastSeen": self._last_seen,
                            "error": {"kind": kind, "message": message, "hint": hint,
                                      "retryIn": backoff, "attempt": attempt}}
        state["health"] = dict(state.get("health") or {}, connected=False)
        state["generatedAt"] = _now()
        self._set(state)

    def _set(self, state: dict[str, Any]) -> None:
        """Publish `state` unless only its time differs from what browsers have."""
        at = state.pop("generatedAt", _now())
        body = json.dumps(state, default=str)
        state["generatedAt"] = at
        if body == self._body and self.version:
            return
        text = body[:-1] + f', "generatedAt": {at!r}}}'
        with self._mu:
            self.state, self.state_json, self._body = state, text, body
            self.version += 1
        self._notify()


def _offer(q: asyncio.Queue, item: int | None) -> None:
    """Put on a queue of one, replacing what is there (on the queue's loop): a subscriber needs
    only the latest news, and the end-of-stream None must never be dropped or raise."""
    if q.full():
        q.get_nowait()
    q.put_nowait(item)


def _open_chain(url: str) -> Any:
    from boidcluster.adapters.chain import KeyRing
    from boidcluster.adapters.chain.blocking import BlockingChain

    return BlockingChain.open(url, KeyRing(), timeout=3.0, call_timeout=10.0)
