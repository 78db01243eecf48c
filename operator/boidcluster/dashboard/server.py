"""Run the dashboard: a LiveView plus uvicorn on a socket bound before the server starts.

The socket is bound first so the address (port 0 picks a free one) is known and a busy port fails
at once with a clear error, and the server runs in a daemon thread next to an operator or alone.
Loopback by default: the page shows accounts and money; exposing it is an explicit choice.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

import uvicorn

from boidcluster.adapters.store import Store

from .app import create_app
from .live import LiveView

log = logging.getLogger(__name__)


class Dashboard:
    def __init__(self, zk: str, *, host: str = "127.0.0.1", port: int = 0, store: Store | None = None,
                 store_factory: Callable[[], Store] | None = None,
                 chain_url: str | None = None, metrics: Callable[[], str] | None = None,
                 metrics_source: str | None = None, refresh: float = 2.0, timeout: float = 5.0) -> None:
        self.live = LiveView(zk, store=store, store_factory=store_factory, chain_url=chain_url, metrics=metrics,
                             metrics_source=metrics_source, refresh=refresh, timeout=timeout)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise OSError(f"cannot serve the dashboard on {host}:{port}: {e.strerror or e}") from None
        self._sock.listen(128)
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.live), log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="boid-dashboard-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except Exception:  # the thread must not die silently
            log.exception("dashboard server stopped")

    def start(self) -> "Dashboard":
        self.live.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.live.stop()  # ends every event stream, so the server can shut down at once
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> "Dashboard":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def registry_metrics(registry: Any) -> Callable[[], str]:
    """Metrics of an operator in this process (engine.metrics.Metrics.registry)."""
    from prometheus_client import generate_latest

    return lambda: generate_latest(registry).decode()


def url_metrics(url: str, timeout: float = 2.0) -> Callable[[], str]:
    """Metrics scraped from an operator's /metrics endpoint."""
    import httpx

    def read() -> str:
        r = httpx.get(url, timeout=timeout)
        r.raise_for_status()
        return r.text

    return read
