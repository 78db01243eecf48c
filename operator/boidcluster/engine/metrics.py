"""Prometheus metrics and health endpoints of one operator process.

Each Operator owns its own CollectorRegistry so several operators (tests, leader-election
replicas in one process) never collide on metric names. The HTTP server binds loopback only.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("boid_reconciles_total", "Reconciles run", ["kind", "result"], registry=r)
        self.errors = Counter("boid_reconcile_errors_total", "Reconciles that raised", ["kind", "reason"], registry=r)
        self.latency = Histogram("boid_reconcile_seconds", "Reconcile latency", ["kind"], registry=r,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge("boid_workqueue_depth", "Keys waiting in the kind's work queue", ["kind"], registry=r)
        self.reasons = Counter("boid_reconcile_reasons_total", "Why objects were reconciled (watch, resync, event, "
                               "notify, requeue, backoff, conflict)", ["kind", "reason"], registry=r)
        self.phases = Histogram("boid_reconcile_phase_seconds", "Time per reconcile phase (read, observe, compare, "
                                "act, report, status)", ["kind", "phase"], registry=r,
                                buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.leader = Gauge("boid_leader", "1 while this replica leads and reconciles", registry=r)

    def watch_backend(self, health: Callable[[], dict[str, Any]]) -> None:
        """Export a cluster backend's `health()` (Mesos: subscribed, and per background thread the
        errors it survived and its current retry backoff)."""
        self.registry.register(_BackendCollector(health))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _BackendCollector:
    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health

    def collect(self):  # noqa: ANN201 (prometheus_client collector protocol)
        h = self.health()
        up = GaugeMetricFamily("boid_backend_subscribed", "1 while the backend's framework is subscribed")
        up.add_metric([], 1.0 if h.get("subscribed") else 0.0)
        yield up
        fails = CounterMetricFamily("boid_backend_thread_errors", "Errors a backend thread survived (then retried)",
                                    labels=["thread"])
        backoff = GaugeMetricFamily("boid_backend_thread_backoff_seconds", "A backend thread's current retry backoff",
                                    labels=["thread"])
        for name, t in sorted((h.get("threads") or {}).items()):
            fails.add_metric([name], float(t.get("failures", 0)))
            backoff.add_metric([name], float(t.get("backoff", 0.0)))
        yield fails
        yield backoff
        if "uncredited_agents" in h:   # Mesos: agents whose offers earn nobody credit (declined)
            unc = GaugeMetricFamily("boid_backend_uncredited_agents",
                                    "Agents offering resources no contributor is credited for (declined)")
            unc.add_metric([], float(len(h["uncredited_agents"])))
            yield unc


class HealthServer:
    """GET /healthz (process alive), /readyz (connected to ZooKeeper: able to lead or stand by), /metrics."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], port: int = 0, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path == "/metrics":
                    body, ctype, code = metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    body, ctype, code = b"ok\n", "text/plain", 200
                elif self.path == "/readyz":
                    ok = ready()
                    body, ctype, code = (b"ready\n" if ok else b"not ready\n"), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="boid-health", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
