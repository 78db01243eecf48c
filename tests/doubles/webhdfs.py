"""TEST DOUBLE of an HDFS namenode + datanode speaking WebHDFS REST. Never shipped, never a backend.

HDFS cannot run on these machines, so the storage adapter is tested against this in-process server
written from Hadoop's WebHDFS.md (hadoop-hdfs-project/hadoop-hdfs/src/site/markdown/WebHDFS.md):

* URLs ``/webhdfs/v1/<PATH>?op=...``; ``user.name`` is accepted and recorded.
* CREATE is two-step: the namenode answers ``307 TEMPORARY_REDIRECT`` with a ``Location`` to a
  "datanode" URL (same server, marked like real datanode URLs by ``namenoderpcaddress=``), or
  ``200 {"Location": ...}`` with ``noredirect=true``; the data PUT to the datanode answers
  ``201 Created`` with ``Location: webhdfs://...``. ``overwrite`` defaults to false.
* OPEN redirects (307) to the datanode, which streams the bytes (``offset``/``length`` honoured).
* MKDIRS, RENAME, DELETE answer the Boolean JSON object; GETFILESTATUS / LISTSTATUS answer
  FileStatus / FileStatuses. RENAME does not overwrite (``{"boolean": false}``), as in HDFS.
* Errors are RemoteException JSON with the spec's status codes (IllegalArgumentException 400,
  SecurityException 401, IOException family 403, FileNotFoundException 404, RuntimeException 500).

``requests`` records what the server received; ``inject_failure`` makes the next matching call fail.
"""

from __future__ import annotations

import json
import posixpath
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .http import HttpDouble

PREFIX = "/webhdfs/v1"

_JAVA = {
    "IllegalArgumentException": "java.lang.IllegalArgumentException",
    "UnsupportedOperationException": "java.lang.UnsupportedOperationException",
    "SecurityException": "java.lang.SecurityException",
    "AccessControlException": "org.apache.hadoop.security.AccessControlException",
    "FileNotFoundException": "java.io.FileNotFoundException",
    "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
    "ParentNotDirectoryException": "org.apache.hadoop.fs.ParentNotDirectoryException",
    "PathIsNotEmptyDirectoryException": "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
    "IOException": "java.io.IOException",
    "StandbyException": "org.apache.hadoop.ipc.StandbyException",
    "RuntimeException": "java.lang.RuntimeException",
}


class _Remote(Exception):
    def __init__(self, status: int, exception: str, message: str) -> None:
        super().__init__(message)
        self.status, self.exception, self.message = status, exception, message


@dataclass
class _Node:
    kind: str  # "FILE" | "DIRECTORY"
    data: bytes = b""
    mtime: int = field(default_factory=lambda: int(time.time() * 1000))
    file_id: int = 0
    permission: str = "755"


@dataclass
class RecordedRequest:
    method: str
    path: str
    op: str
    params: dict[str, str]
    body_size: int
    datanode: bool
    status: int = 0


class WebHdfsDouble(HttpDouble):
    """In-process WebHDFS server on 127.0.0.1. Use as a context manager or start()/stop()."""

    thread_name = "webhdfs-double"

    def __init__(self, owner: str = "boid") -> None:
        super().__init__()
        self.owner = owner
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {"/": _Node("DIRECTORY", file_id=16385)}
        self._next_id = 16386
        self._failures: list[tuple[str, str | None, int, str, str]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, root: str = "/") -> str:
        """A ``webhdfs://`` storage URL for this double."""
        return f"webhdfs://127.0.0.1:{self.port}/{root.lstrip('/')}"

    # -- test helpers ---------------------------------------------------------------------------

    def inject_failure(self, op: str, status: int, exception: str, message: str = "injected", path: str | None = None) -> None:
        """The next request with ``op`` (and ``path`` if given) fails with this RemoteException."""
        with self._lock:
            self._failures.append((op.upper(), path, status, exception, message))

    def ops(self) -> list[tuple[str, str, bool]]:
        """(op, path, datanode?) of every request, in order."""
        with self._lock:
            return [(r.op, r.path, r.datanode) for r in self.requests]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def file_bytes(self, path: str) -> bytes | None:
        with self._lock:
            node = self._nodes.get(posixpath.normpath(path))
            return node.data if node and node.kind == "FILE" else None

    # -- namespace ------------------------------------------------------------------------------

    def _children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p for p in self._nodes if p != "/" and p.startswith(prefix) and "/" not in p[len(prefix):])

    def _status(self, path: str, node: _Node, suffix: str) -> dict:
        return {
            "accessTime": node.mtime if node.kind == "FILE" else 0,
            "blockSize": 134217728 if node.kind == "FILE" else 0,
            "childrenNum": len(self._children(path)) if node.kind == "DIRECTORY" else 0,
            "fileId": node.file_id,
            "group": "supergroup",
            "length": len(node.data) if node.kind == "FILE" else 0,
            "modificationTime": node.mtime,
            "owner": self.owner,
            "pathSuffix": suffix,
            "permission": node.permission,
            "replication": 3 if node.kind == "FILE" else 0,
            "storagePolicy": 0,
            "type": node.kind,
        }

    def _mkdirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        cur = ""
        for part in parts:
            cur = f"{cur}/{part}"
            node = self._nodes.get(cur)
            if node is None:
                self._nodes[cur] = _Node("DIRECTORY", file_id=self._new_id())
            elif node.kind != "DIRECTORY":
                raise _Remote(403, "ParentNotDirectoryException" if cur != path else "FileAlreadyExistsException",
                              f"Parent path is not a directory: {cur}" if cur != path else f"Path is not a directory: {path}")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- operations (called under the lock) -----------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, str], body: bytes, datanode: bool) -> tuple[int, dict[str, str], bytes]:
        op = params.get("op", "").upper()
        for i, (fop, fpath, status, exc, msg) in enumerate(self._failures):
            if fop == op and (fpath is None or fpath == path) and not datanode:
                del self._failures[i]
                raise _Remote(status, exc, msg)
        if not path.startswith("/"):
            raise _Remote(400, "IllegalArgumentException", f"Invalid path: {path}")
        if datanode:
            return self._datanode(method, op, path, params, body)
        expected = {"CREATE": "PUT", "MKDIRS": "PUT", "RENAME": "PUT", "GETFILESTATUS": "GET",
                    "LISTSTATUS": "GET", "OPEN": "GET", "DELETE": "DELETE"}
        if op not in expected:
            raise _Remote(400, "IllegalArgumentException", f'Invalid value for webhdfs parameter "op": No enum constant {op}')
        if method != expected[op]:
            raise _Remote(400, "IllegalArgumentException", f"Invalid http method {method} for op {op}")
        node = self._nodes.get(path)
        if op in ("CREATE", "OPEN"):
            if op == "OPEN":
                if node is None:
                    raise _Remote(404, "FileNotFoundException", f"File does not exist: {path}")
                if node.kind != "FILE":
                    raise _Remote(404, "FileNotFoundException", f"Path is not a file: {path}")
            if body:
                raise _Remote(400, "IllegalArgumentException", "step 1 of a two-step operation must not send data")
            query = dict(params, namenoderpcaddress="127.0.0.1:8020")
            location = f"http://127.0.0.1:{self.port}{PREFIX}{quote(path, safe='/')}?" + "&".join(
                f"{quote(k, safe='.')}={quote(v, safe='')}" for k, v in query.items())
            if params.get("noredirect") == "true":
                return 200, {"Content-Type": "application/json"}, json.dumps({"Location": location}).encode()
            return 307, {"Location": location}, b""
        if op == "GETFILESTATUS":
            if node is None:
                raise _Remote(404, "FileNotFoundException", f"File does not exist: {path}")
            return self._json({"FileStatus": self._status(path, node, "")})
        if op == "LISTSTATUS":
            if node is None:
                raise _Remote(404, "FileNotFoundException", f"File {path} does not exist.")
            if node.kind == "FILE":
                return self._json({"FileStatuses": {"FileStatus": [self._status(path, node, "")]}})
            items = [self._status(c, self._nodes[c], posixpath.basename(c)) for c in self._children(path)]
            return self._json({"FileStatuses": {"FileStatus": items}})
        if op == "MKDIRS":
            self._mkdirs(path)
            return self._json({"boolean": True})
        if op == "DELETE":
            if node is None or path == "/":
                return self._json({"boolean": False})
            children = self._children(path) if node.kind == "DIRECTORY" else []
            if children and params.get("recursive", "false") != "true":
                raise _Remote(403, "PathIsNotEmptyDirectoryException", f"`{path} is non empty': Directory is not empty")
            for p in [p for p in self._nodes if p == path or p.startswith(path + "/")]:
                del self._nodes[p]
            return self._json({"boolean": True})
        if op == "RENAME":
            dst = params.get("destination", "")
            if not dst.startswith("/"):
                raise _Remote(400, "IllegalArgumentException", f'Invalid value for webhdfs parameter "destination": {dst!r}')
            dst = posixpath.normpath(dst)
            if node is None or path == "/":
                return self._json({"boolean": False})
            target = self._nodes.get(dst)
            if target is not None and target.kind == "DIRECTORY":
                dst = posixpath.join(dst, posixpath.basename(path))
            parent = self._nodes.get(posixpath.dirname(dst))
            if dst in self._nodes or parent is None or parent.kind != "DIRECTORY" or dst == path or dst.startswith(path + "/"):
                return self._json({"boolean": False})
            for p in sorted(p for p in self._nodes if p == path or p.startswith(path + "/")):
                self._nodes[dst + p[len(path):]] = self._nodes.pop(p)
            return self._json({"boolean": True})
        raise AssertionError(op)

    def _datanode(self, method: str, op: str, path: str, params: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if op == "CREATE" and method == "PUT":
            node = self._nodes.get(path)
            if node is not None and node.kind == "DIRECTORY":
                raise _Remote(403, "FileAlreadyExistsException", f"{path} already exists as a directory")
            if node is not None and params.get("overwrite", "false") != "true":
                raise _Remote(403, "FileAlreadyExistsException", f"{path} for client 127.0.0.1 already exists")
            self._mkdirs(posixpath.dirname(path))
            self._nodes[path] = _Node("FILE", data=body, file_id=self._new_id(), permission="644")
            return 201, {"Location": f"webhdfs://127.0.0.1:{self.port}{quote(path, safe='/')}"}, b""
        if op == "OPEN" and method == "GET":
            node = self._nodes.get(path)
            if node is None or node.kind != "FILE":
                raise _Remote(404, "FileNotFoundException", f"File does not exist: {path}")
            offset = int(params.get("offset", "0"))
            length = params.get("length")
            data = node.data[offset: offset + int(length) if length is not None else None]
            return 200, {"Content-Type": "application/octet-stream"}, data
        raise _Remote(400, "IllegalArgumentException", f"datanode does not serve {method} op={op}")

    @staticmethod
    def _json(obj: dict) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: WebHdfsDouble

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._body()
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        datanode = "namenoderpcaddress" in params
        double = self.double
        if not parts.path.startswith(PREFIX):
            status, headers, payload = 404, {"Content-Type": "text/plain"}, b"not a WebHDFS URL"
            path = parts.path
        else:
            path = posixpath.normpath(unquote(parts.path[len(PREFIX):]) or "/")
            try:
                with double._lock:
                    status, headers, payload = double.handle(self.command, path, params, body, datanode)
            except _Remote as e:
                status, headers = e.status, {"Content-Type": "application/json"}
                payload = json.dumps({"RemoteException": {
                    "exception": e.exception, "javaClassName": _JAVA.get(e.exception, "java.io.IOException"),
                    "message": e.message}}).encode()
        with double._lock:
            double.requests.append(RecordedRequest(self.command, path, params.get("op", "").upper(), params,
                                                   len(body), datanode, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = _serve


WebHdfsDouble.handler = _Handler
