"""The local backend's compiled spawner: built once into a private cache, never loaded from a path
another user could have written (the spawner runs inside the operator)."""

from __future__ import annotations

import hashlib
import os
import stat

from boidcluster.adapters.local import spawn


def fresh(monkeypatch, cache):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(spawn, "_helper", [])


def target(cache):
    return cache / "boid" / f"libboidspawn-{hashlib.sha256(spawn.SOURCE.read_bytes()).hexdigest()[:16]}.so"


def test_built_once_into_a_private_cache_and_reused(tmp_path, monkeypatch):
    fresh(monkeypatch, tmp_path)
    first = spawn.exec_helper()
    assert first is not None and first.path == str(target(tmp_path))
    assert stat.S_IMODE((tmp_path / "boid").stat().st_mode) == 0o700
    assert stat.S_IMODE(target(tmp_path).stat().st_mode) == 0o700
    assert spawn.exec_helper() is first   # once per process
    monkeypatch.setattr(spawn, "_helper", [])
    built = target(tmp_path).stat().st_mtime_ns
    assert spawn.exec_helper().path == first.path and target(tmp_path).stat().st_mtime_ns == built  # cached


def test_a_cache_directory_others_can_write_is_not_used(tmp_path, monkeypatch):
    fresh(monkeypatch, tmp_path)
    (tmp_path / "boid").mkdir(mode=0o777)
    os.chmod(tmp_path / "boid", 0o777)
    got = spawn.exec_helper()
    assert got is not None and not got.path.startswith(str(tmp_path))   # built in a private directory


def test_a_library_others_can_write_is_never_loaded(tmp_path, monkeypatch):
    fresh(monkeypatch, tmp_path)
    (tmp_path / "boid").mkdir(mode=0o700)
    planted = target(tmp_path)
    planted.write_bytes(b"not a library")
    os.chmod(planted, 0o666)
    assert spawn.exec_helper() is None   # the backend falls back to setpriv + prlimit
    assert planted.read_bytes() == b"not a library"


def test_without_a_compiler_the_backend_falls_back(tmp_path, monkeypatch):
    fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(spawn.shutil, "which", lambda name, *a, **kw: None)
    assert spawn.exec_helper() is None
