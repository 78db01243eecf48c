"""A blocking facade over the async chain adapter, for the engine's worker threads.

The RPC client is asyncio (httpx.AsyncClient); the engine reconciles on threads. One event loop
runs in a dedicated daemon thread and owns the client; any worker thread submits a coroutine to
it and waits, bounded by a timeout. This keeps a single connection pool and a single TAPOS and
ABI cache for all workers, instead of a loop (and a pool) per thread.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Awaitable, TypeVar

from .boid import BoidChain, ChainAuth
from .keys import KeyRing
from .rpc import RpcClient

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "boid-chain-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking chain call from inside the chain loop would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        self.loop.close()


class Blocking:
    """Every coroutine method of `target` becomes a blocking call; other attributes pass through."""

    def __init__(self, target: Any, loop: LoopThread, timeout: float | None = 60.0) -> None:
        self._target, self._loop, self._timeout = target, loop, timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            def call(*args: Any, **kwargs: Any) -> Any:
                return self._loop.run(attr(*args, **kwargs), self._timeout)
            return call
        return attr


class BlockingChain(Blocking):
    """`BoidChain` for threads: `BlockingChain.open(url, keys).protocol_row(owner, researcher)`."""

    rpc: Blocking

    @classmethod
    def open(cls, url: str, keys: KeyRing, *, auth: ChainAuth | None = None, timeout: float = 10.0,
             call_timeout: float = 60.0) -> "BlockingChain":
        loop = LoopThread()

        async def build() -> BoidChain:
            return BoidChain(RpcClient(url, keys, timeout=timeout), auth=auth)

        chain = loop.run(build())
        out = cls(chain, loop, call_timeout)
        out.rpc = Blocking(chain.rpc, loop, call_timeout)
        return out

    def close(self) -> None:
        try:
            self._loop.run(self._target.rpc.aclose(), 5)
        finally:
            self._loop.close()
