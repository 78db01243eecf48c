"""The one HTTP server lifecycle every test double shares: a threaded server on 127.0.0.1 with a
free port, started and stopped by the test (or as a context manager)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HttpDouble:
    """Subclasses set `handler` (a request handler class; it finds the double as `self.double`)."""

    handler: type[BaseHTTPRequestHandler]
    thread_name = "http-double"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Any:
        class Handler(self.handler):  # type: ignore[name-defined,misc]
            pass

        Handler.double = self  # type: ignore[attr-defined]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "double not started"
        return self._server.server_address[1]
