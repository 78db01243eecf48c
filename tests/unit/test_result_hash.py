"""A unit's result hash (amalgamate.result_hash): the local short way (os.scandir) gives exactly
what the general way through Storage.list gives; anything but plain files and directories
takes the general way."""

from __future__ import annotations

import hashlib
import os

from boidcluster.adapters.storage import Storage
from boidcluster.reconcilers.jobs import amalgamate
from boidcluster.reconcilers.jobs.amalgamate import _plain_local_files, output_files, result_hash


def _remote(url: str) -> Storage:
    """The same files, but not recognised as local: output_files takes the Storage.list way."""
    s = Storage(url)
    s.url = "webhdfs://elsewhere/" + url
    return s


def test_local_short_way_equals_the_storage_way(tmp_path):
    out = tmp_path / "p" / "u1"
    (out / "a" / "b").mkdir(parents=True)
    (out / "empty").mkdir()
    for rel, data in {"z.txt": b"z", "a/x.jsonl": b'{"x":1}\n', "a/b/y": b"", ".stdout": b"log", ".stderr": b"e",
                      ".boid-tmp-123": b"half", "a/.stdout": b"kept: only the top-level logs are excluded"}.items():
        (out / rel).write_bytes(data)
    local = Storage(f"file://{tmp_path}")
    files = output_files(local, "p/u1")
    assert files == ["a/.stdout", "a/b/y", "a/x.jsonl", "z.txt"]
    assert files == output_files(_remote(f"file://{tmp_path}"), "p/u1")
    h = hashlib.sha256()
    for rel in files:
        data = (out / rel).read_bytes()
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert result_hash(local, "p/u1") == h.hexdigest()
    assert output_files(local, "p/none") == [] and result_hash(local, "p/none") == hashlib.sha256().hexdigest()


def test_anything_but_plain_files_takes_the_storage_way(tmp_path, monkeypatch):
    out = tmp_path / "p" / "u2"
    out.mkdir(parents=True)
    (out / "f").write_bytes(b"1")
    os.symlink(out / "f", out / "link")
    assert _plain_local_files(str(out)) is None
    called = []
    monkeypatch.setattr(Storage, "list", lambda self, path, **kw: called.append(path) or [])
    output_files(Storage(f"file://{tmp_path}"), "p/u2")
    assert called == ["p/u2"]
    assert amalgamate.LOG_FILES == {".stdout", ".stderr"}


def manifest_json(manifest: dict) -> bytes:
    """What write_manifest writes for `manifest`."""
    import io

    from boidcluster.reconcilers.jobs.amalgamate import write_manifest

    buf = io.BytesIO()
    write_manifest(buf, manifest)
    return buf.getvalue()


def test_the_manifest_reads_as_the_indented_dump():
    import json

    m = {"job": "j", "uid": "x", "reduce": "none", "image_digest": None, "output": "o", "protocol": "p", "image": "i",
         "units": [{"id": f"u{i:06d}", "index": i, "params": {"b": [1, 2], "a": "é"}, "inputs": [], "hash": "h",
                    "output": "d", "credited": [{"contributor": "alice", "microseconds": 5}]} for i in range(3)]}
    text = manifest_json(m)
    assert json.loads(text) == m and text.endswith(b"}\n") and text.count(b"\n") == 8 + 3 + 3
    for odd in ({**m, "units": []}, {**m, "zz": 1}, {"a": 1}):
        assert manifest_json(odd) == json.dumps(odd, indent=2, sort_keys=True).encode() + b"\n"


def test_the_manifest_is_written_as_its_units_come_not_held_whole():
    """A 100,000-unit job's manifest was built whole in memory (~180 MB of objects and text):
    write_manifest writes each unit before it asks for the next, and the bytes are the same."""
    import io

    from boidcluster.reconcilers.jobs.amalgamate import write_manifest

    out = io.BytesIO()
    unit = lambda i: {"id": f"u{i:06d}", "index": i, "hash": "h", "credited": []}   # noqa: E731

    def units():
        for i in range(5):
            if i:   # asked for the next unit: the one before it is in the file already
                assert f'"u{i - 1:06d}"'.encode() in out.getvalue()
            yield unit(i)

    write_manifest(out, {"job": "j", "uid": "x", "units": units()})
    assert out.getvalue() == manifest_json({"job": "j", "uid": "x", "units": [unit(i) for i in range(5)]})
