"""One process per data directory: an flock that the server process itself holds.

Why it is shaped so: two servers on one data directory corrupt it (two nodeos on one chain
state stall and leave a "Fork database exception" behind). A pid file cannot prevent that, since
it goes stale when its process is killed. An `flock` is released by the kernel when the last
descriptor of it closes, whoever dies: the starter takes the lock, hands the descriptor to the
server it starts (`pass_fds`) and closes its own copy, so the lock lives exactly as long as the
server. The file also records who holds it (pid, port), for the error a second starter gets and
for a starter that adopts the running server instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


class DirectoryBusy(RuntimeError):
    """Another live process holds the lock of this data directory."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder or {}
        who = f"pid {self.holder['pid']}" if self.holder.get("pid") else "another process"
        super().__init__(f"{who} already runs on the data directory of {path.parent} (lock {path.name})")


def acquire(path: Path) -> int:
    """Take the lock without waiting; returns its descriptor (hand it to the server with pass_fds).

    Raises DirectoryBusy naming the holder when a live process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryBusy(path, holder(path)) from None
    return fd


def record(fd: int, info: dict[str, Any]) -> None:
    """Write who holds the lock (pid, port) into the lock file."""
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def holder(path: Path) -> dict[str, Any] | None:
    """What the lock file says about its holder (may be stale: check `locked` first)."""
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def locked(path: Path) -> bool:
    """True while some live process holds the lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False
