"""Storage adapter: the same cases against file:// (a tmp dir) and webhdfs:// (the WebHDFS test double)."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from boidcluster.adapters.storage import (
    TMP_PREFIX,
    InvalidPath,
    NotFound,
    PermissionDenied,
    Storage,
    StorageError,
    StorageUnavailable,
)
from doubles.webhdfs import WebHdfsDouble


@pytest.fixture(scope="module")
def webhdfs():
    with WebHdfsDouble() as double:
        yield double


@pytest.fixture(params=["file", "webhdfs"])
def storage(request, tmp_path):
    if request.param == "file":
        s = Storage(f"file://{tmp_path}/root")
    else:
        double = request.getfixturevalue("webhdfs")
        s = Storage(double.url(f"/t/{uuid.uuid4().hex}/boid"), user="boid", timeout=5)
    with s:
        yield s


# -- the shared contract ---------------------------------------------------------------------------


def test_ensure_dir_is_idempotent_and_creates_parents(storage):
    storage.ensure_dir("protocols/alpha/data")
    storage.ensure_dir("protocols/alpha/data")
    assert storage.exists("protocols/alpha/data")
    [entry] = storage.list("protocols/alpha")
    assert (entry.name, entry.path, entry.type, entry.is_dir) == ("data", "protocols/alpha/data", "directory", True)


def test_ensure_dir_over_a_file_fails(storage):
    storage.write_bytes("a/file", b"x")
    with pytest.raises(StorageError):
        storage.ensure_dir("a/file")


def test_write_read_roundtrip_overwrite_and_parents(storage):
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    storage.write_bytes("deep/er/blob.bin", payload)
    assert storage.read_bytes("deep/er/blob.bin") == payload
    storage.write_bytes("deep/er/blob.bin", b"short")
    assert storage.read_bytes("deep/er/blob.bin") == b"short"
    assert storage.stat("deep/er/blob.bin").size == 5


def test_empty_file_and_names_needing_quoting(storage):
    storage.write_bytes("dir with space/ünï cødé & ?#%.txt", b"")
    assert storage.read_bytes("dir with space/ünï cødé & ?#%.txt") == b""
    assert [e.name for e in storage.list("dir with space")] == ["ünï cødé & ?#%.txt"]


def test_missing_paths_raise_not_found(storage):
    with pytest.raises(NotFound):
        storage.read_bytes("nope")
    with pytest.raises(NotFound):
        storage.list("nope")
    assert not storage.exists("nope")
    assert storage.stat("nope") is None


def test_read_of_a_directory_is_not_found(storage):
    storage.ensure_dir("d")
    with pytest.raises(NotFound):
        storage.read_bytes("d")


def test_list_sorted_with_types_and_sizes(storage):
    storage.write_bytes("out/b.json", b"{}")
    storage.write_bytes("out/a.txt", b"hello")
    storage.ensure_dir("out/c")
    entries = storage.list("out")
    assert [(e.name, e.type, e.size) for e in entries] == [
        ("a.txt", "file", 5), ("b.json", "file", 2), ("c", "directory", 0)]
    assert entries[0].path == "out/a.txt"
    assert entries[0].modified is not None


def test_list_of_a_file_is_an_error(storage):
    storage.write_bytes("f", b"1")
    with pytest.raises(StorageError) as err:
        storage.list("f")
    assert not isinstance(err.value, NotFound)


def test_delete_is_idempotent_and_guards_non_empty_dirs(storage):
    storage.write_bytes("d/f", b"1")
    storage.ensure_dir("empty")
    assert storage.delete("empty") is True
    with pytest.raises(StorageError):
        storage.delete("d")
    assert storage.delete("d/f") is True
    assert storage.delete("d/f") is False
    storage.write_bytes("d/g/h", b"1")
    assert storage.delete("d", recursive=True) is True
    assert not storage.exists("d")
    assert storage.delete("d", recursive=True) is False


def test_root_cannot_be_deleted(storage):
    with pytest.raises(InvalidPath):
        storage.delete("")
    with pytest.raises(InvalidPath):
        storage.delete("/", recursive=True)


def test_publish_atomic_new_and_replace(storage):
    storage.publish_atomic("results/out.jsonl", b"one\n")
    assert storage.read_bytes("results/out.jsonl") == b"one\n"
    storage.publish_atomic("results/out.jsonl", b"two\n")
    assert storage.read_bytes("results/out.jsonl") == b"two\n"
    assert [e.name for e in storage.list("results", include_temporary=True)] == ["out.jsonl"]


def test_publish_atomic_with_a_writer(storage):
    def writer(f):
        for i in range(1000):
            f.write(f"{i}\n".encode())

    storage.publish_atomic("r/amalgamated.txt", writer)
    assert storage.read_bytes("r/amalgamated.txt") == "".join(f"{i}\n" for i in range(1000)).encode()


def test_publish_atomic_failed_writer_leaves_old_file_and_no_temporary(storage):
    storage.publish_atomic("r/out", b"old")

    def broken(f):
        f.write(b"half a fi")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        storage.publish_atomic("r/out", broken)
    assert storage.read_bytes("r/out") == b"old"
    assert [e.name for e in storage.list("r", include_temporary=True)] == ["out"]


def test_publish_atomic_refuses_a_directory_target(storage):
    storage.ensure_dir("r/out")
    with pytest.raises(StorageError):
        storage.publish_atomic("r/out", b"x")


def test_list_hides_publish_temporaries(storage):
    storage.write_bytes(f"r/{TMP_PREFIX}abc-out", b"partial")
    storage.write_bytes("r/out", b"whole")
    assert [e.name for e in storage.list("r")] == ["out"]
    assert len(storage.list("r", include_temporary=True)) == 2


def test_readers_see_old_or_new_never_partial(storage):
    old, new = b"A" * 200_000, b"B" * 300_000
    storage.publish_atomic("r/x", old)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(storage.read_bytes("r/x"))
            except NotFound:  # the documented WebHDFS delete-then-rename window
                seen.add(None)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(5):
            storage.publish_atomic("r/x", new if i % 2 == 0 else old)
    finally:
        stop.set()
        t.join()
    assert seen <= {old, new, None}


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../x", "/../etc/passwd", "a/b/../../../c"])
def test_escapes_are_rejected_with_a_clear_error(storage, bad):
    with pytest.raises(InvalidPath, match="escapes the storage root"):
        storage.read_bytes(bad)
    with pytest.raises(ValueError):  # InvalidPath is also a ValueError
        storage.write_bytes(bad, b"x")


def test_dot_dot_inside_the_root_and_leading_slash_are_fine(storage):
    storage.write_bytes("/a/../b/file", b"1")
    assert storage.read_bytes("b/file") == b"1"
    assert storage.read_bytes("/b/./file") == b"1"


def test_nul_byte_rejected(storage):
    with pytest.raises(InvalidPath):
        storage.read_bytes("a\x00b")


def test_two_roots_are_isolated(storage):
    storage.write_bytes("mine/f", b"1")
    scheme_root = storage.url.rstrip("/")
    with Storage(scheme_root + "/mine") as inner:
        assert [e.name for e in inner.list("")] == ["f"]
        with pytest.raises(InvalidPath):
            inner.read_bytes("../mine/f")


# -- backend specifics ------------------------------------------------------------------------------


def test_local_symlink_escape_is_rejected(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with Storage(f"file://{root}") as s:
        with pytest.raises(InvalidPath, match="outside the storage root"):
            s.read_bytes("link/secret")


def test_a_link_planted_after_its_directory_was_resolved_is_still_refused(tmp_path):
    """check_inside remembers a directory's resolved path (every unit's end is checked); a link
    a unit plants among its outputs afterwards, the last component, is always looked at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    (root / "out" / "a").write_bytes(b"a")
    with Storage(f"file://{root}") as s:
        assert s.read_bytes("out/a") == b"a"          # out/ is resolved and remembered now
        os.symlink(outside / "secret", root / "out" / "b")
        with pytest.raises(InvalidPath, match="outside the storage root"):
            s.read_bytes("out/b")
        os.symlink(outside, root / "out" / "dir")
        with pytest.raises(InvalidPath, match="outside the storage root"):
            s.list("out/dir")


def test_bad_urls():
    with pytest.raises(InvalidPath):
        Storage("s3://bucket/x")
    with pytest.raises(InvalidPath):
        Storage("file://remotehost/x")
    with pytest.raises(InvalidPath):
        Storage("webhdfs:///nohost")


def test_webhdfs_create_is_two_step_and_open_redirects(webhdfs):
    with Storage(webhdfs.url("/two-step"), user="alice") as s:
        webhdfs.clear_requests()
        s.write_bytes("f.bin", b"payload")
        assert s.read_bytes("f.bin") == b"payload"
    reqs = webhdfs.requests
    create_nn, create_dn, open_nn, open_dn = reqs
    assert (create_nn.method, create_nn.op, create_nn.datanode, create_nn.status, create_nn.body_size) == ("PUT", "CREATE", False, 307, 0)
    assert create_nn.params["overwrite"] == "true" and create_nn.params["user.name"] == "alice"
    assert (create_dn.method, create_dn.op, create_dn.datanode, create_dn.status, create_dn.body_size) == ("PUT", "CREATE", True, 201, 7)
    assert (open_nn.op, open_nn.status, open_dn.datanode, open_dn.status) == ("OPEN", 307, True, 200)
    assert create_nn.path == "/two-step/f.bin"


def test_webhdfs_publish_atomic_renames_over_by_delete_then_rename(webhdfs):
    with Storage(webhdfs.url("/atomic")) as s:
        s.publish_atomic("o", b"1")
        webhdfs.clear_requests()
        s.publish_atomic("o", b"2")
    ops = [(op, dn) for op, _, dn in webhdfs.ops()]
    assert ops == [("GETFILESTATUS", False), ("CREATE", False), ("CREATE", True),
                   ("RENAME", False),  # false: RENAME never overwrites
                   ("GETFILESTATUS", False), ("GETFILESTATUS", False), ("DELETE", False), ("RENAME", False)]
    tmp_path = webhdfs.requests[1].path
    assert tmp_path.startswith(f"/atomic/{TMP_PREFIX}") and webhdfs.requests[3].params["destination"] == "/atomic/o"
    assert webhdfs.file_bytes("/atomic/o") == b"2"


def test_webhdfs_remote_exceptions_are_typed(webhdfs):
    with Storage(webhdfs.url("/errors")) as s:
        webhdfs.inject_failure("GETFILESTATUS", 403, "AccessControlException", "Permission denied: user=x")
        with pytest.raises(PermissionDenied, match="Permission denied"):
            s.exists("f")
        webhdfs.inject_failure("MKDIRS", 403, "StandbyException", "Operation category WRITE is not supported in state standby")
        with pytest.raises(StorageUnavailable):
            s.ensure_dir("d")
        webhdfs.inject_failure("LISTSTATUS", 500, "RuntimeException", "boom")
        with pytest.raises(StorageUnavailable):
            s.list("")
        webhdfs.inject_failure("OPEN", 400, "IllegalArgumentException", "Invalid value")
        with pytest.raises(StorageError, match="IllegalArgumentException"):
            s.read_bytes("f")


def test_webhdfs_unreachable_is_storage_unavailable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with Storage(f"webhdfs://127.0.0.1:{port}/boid", timeout=2) as s:
        with pytest.raises(StorageUnavailable):
            s.ensure_dir("x")


# -- ensure_dir remembers what it made sure of ------------------------------------------------------


def test_ensure_dir_asks_the_namenode_once_until_the_directory_is_deleted(webhdfs):
    """A reconciler ensures every protocol's datadir on every pass: on WebHDFS each ask is a round
    trip, so a directory made sure of is not asked for again; deleting it through the Storage
    forgets it (and everything under it), so the next ensure_dir makes it again."""
    s = Storage(webhdfs.url(f"/t/{uuid.uuid4().hex}/boid"), user="boid", timeout=5)
    webhdfs.clear_requests()
    for _ in range(5):
        s.ensure_dir("protocols/pi", known_for=60)
    s.ensure_dir("protocols/pi/sub", known_for=60)
    mkdirs = [p for op, p, _ in webhdfs.ops() if op == "MKDIRS"]
    assert len(mkdirs) == 2 and mkdirs[0].endswith("/protocols/pi") and mkdirs[1].endswith("/protocols/pi/sub")
    assert s.delete("protocols", recursive=True)
    assert not s.exists("protocols/pi")
    s.ensure_dir("protocols/pi/sub", known_for=60)
    assert s.exists("protocols/pi/sub")
    assert len([1 for op, _, _ in webhdfs.ops() if op == "MKDIRS"]) == 3
    s.ensure_dir("protocols/pi/sub")  # without known_for (the default): always asked
    assert len([1 for op, _, _ in webhdfs.ops() if op == "MKDIRS"]) == 4


def test_ensure_dir_looks_again_after_known_for(tmp_path):
    """A directory removed behind the Storage's back is made again once `known_for` has passed,
    and at once by a caller that does not accept a remembered answer."""
    import shutil

    s = Storage(f"file://{tmp_path}/root")
    s.ensure_dir("pi", known_for=3600)
    shutil.rmtree(tmp_path / "root" / "pi")
    s.ensure_dir("pi", known_for=3600)  # remembered: not looked at again within known_for
    assert not (tmp_path / "root" / "pi").exists()
    s.ensure_dir("pi")
    assert (tmp_path / "root" / "pi").is_dir()


def test_ensure_dir_over_a_file_fails_every_time(tmp_path):
    """Only success is remembered: a file in the way keeps failing."""
    s = Storage(f"file://{tmp_path}/root")
    s.write_bytes("a", b"x")
    for _ in range(2):
        with pytest.raises(StorageError):
            s.ensure_dir("a", known_for=60)
