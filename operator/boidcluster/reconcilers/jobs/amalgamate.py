"""Result hashing and amalgamation: accepted unit outputs -> one published result in storage.

A unit's result is the sha256 over its output files (sorted relative paths and contents; the
backend's `.stdout`/`.stderr` logs excluded), so replicas on different machines compare by value.
Amalgamation runs once every unit is accepted and publishes each file with
`Storage.publish_atomic`, the manifest last: readers see complete files, and a manifest means the
whole output is there. Publishing is idempotent (atomic overwrite), so a crash between publishing
and the `final` record simply publishes again.

Reducers: concat (every accepted unit's files, in unit order, joined into `results`), jsonl (the
units' `*.jsonl` lines joined into `results.jsonl`, each line checked as JSON), none (only the
manifest; unit directories stay where they are, listed in it), command (output.command runs on
this machine with the accepted unit directories as arguments, in unit order (with
output.unitDirs: file, only in the file named by BOID_UNIT_DIRS, one per line, which is given in
both cases: a 100,000-unit job's directories do not fit in one command line), and
BOID_OUTPUT_DIR set to an empty scratch directory; whatever it writes there is published; it
needs `file://` storage and is given 10 minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

from boidcluster.adapters.local.backend import LOG_FILES
from boidcluster.adapters.storage import TMP_PREFIX, NotFound, Storage

COMMAND_TIMEOUT = 600


class OutputInvalid(Exception):
    """The accepted outputs cannot be amalgamated (bad JSON line, reducer failed)."""

    reason = "OutputInvalid"


def output_files(storage: Storage, directory: str) -> list[str]:
    """Relative paths of a unit's output files, sorted, logs excluded (recursive)."""
    if storage.url.startswith("file:"):   # every unit's end is hashed: the short way when it is plain
        found = _plain_local_files(storage.resolve(directory))
        if found is not None:
            return found
    out: list[str] = []

    def walk(rel: str) -> None:
        try:
            entries = storage.list(posixpath.join(directory, rel) if rel else directory)
        except NotFound:
            return
        for e in entries:
            child = posixpath.join(rel, e.name) if rel else e.name
            if e.is_dir:
                walk(child)
            elif e.type == "file" and child not in LOG_FILES:
                out.append(child)

    walk("")
    return sorted(out)


def _plain_local_files(root: str) -> list[str] | None:
    """`output_files` of a local directory (already resolved inside the storage root) by
    os.scandir, when it holds only regular files and directories; None when anything else is
    there (a symlink, a fifo...): the general path through Storage then decides, as always."""
    out: list[str] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        try:
            entries = os.scandir(os.path.join(root, rel) if rel else root)
        except FileNotFoundError:
            if rel:
                return None
            return []   # no output directory: no files (as Storage.list's NotFound)
        with entries:
            for e in entries:
                if e.name.startswith(TMP_PREFIX):
                    continue
                child = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    todo.append(child)
                elif e.is_file(follow_symlinks=False):
                    if child not in LOG_FILES:
                        out.append(child)
                else:
                    return None
    return sorted(out)


def result_hash(storage: Storage, directory: str) -> str:
    h = hashlib.sha256()
    for rel in output_files(storage, directory):
        data = storage.read_bytes(posixpath.join(directory, rel))
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def publish(storage: Storage, out: str, reduce: str, command: str | list[str] | None,
            units: Sequence[tuple[str, str]], manifest: dict[str, Any], unit_dirs: str = "arguments") -> list[str]:
    """Amalgamate `units` ([(unit id, storage dir of its accepted output)], in unit order) into
    `out`; returns the published paths (manifest last). The manifest's "units" may be any
    iterable: it is written as it is consumed."""
    storage.ensure_dir(out)
    published: list[str] = []
    if reduce == "concat":
        def concat(f: BinaryIO) -> None:
            for _, d in units:
                for rel in output_files(storage, d):
                    f.write(storage.read_bytes(posixpath.join(d, rel)))
        storage.publish_atomic(posixpath.join(out, "results"), concat)
        published.append(posixpath.join(out, "results"))
    elif reduce == "jsonl":
        def jsonl(f: BinaryIO) -> None:
            for unit, d in units:
                for rel in output_files(storage, d):
                    if not rel.endswith(".jsonl"):
                        continue
                    for n, line in enumerate(storage.read_bytes(posixpath.join(d, rel)).splitlines(), 1):
                        if not line.strip():
                            continue
                        try:
                            json.loads(line)
                        except ValueError as e:
                            raise OutputInvalid(f"unit {unit}: {rel} line {n} is not JSON: {e}") from None
                        f.write(line.rstrip(b"\r") + b"\n")
        storage.publish_atomic(posixpath.join(out, "results.jsonl"), jsonl)
        published.append(posixpath.join(out, "results.jsonl"))
    elif reduce == "command":
        published += _run_reducer(storage, out, command, units, unit_dirs)
    path = posixpath.join(out, "manifest.json")
    storage.publish_atomic(path, lambda f: write_manifest(f, manifest))
    return published + [path]


def write_manifest(f: BinaryIO, manifest: dict[str, Any]) -> None:
    """The manifest, indented, one unit per line, written as its units are consumed (a
    100,000-unit job's manifest is never whole in memory): what json.dumps(indent=2,
    sort_keys=True) reads, made by the C encoder (the indenting one is pure Python: seconds for
    100,000 units)."""
    units = iter(manifest.get("units") or ())
    first = next(units, None)
    if first is None or max(manifest) != "units":
        whole = {**manifest, "units": [] if first is None else [first, *units]} if "units" in manifest else manifest
        f.write(json.dumps(whole, indent=2, sort_keys=True).encode() + b"\n")
        return
    head = json.dumps({k: v for k, v in manifest.items() if k != "units"}, indent=2, sort_keys=True)
    f.write(f'{head[:-2]},\n  "units": [\n    {json.dumps(first, sort_keys=True)}'.encode())
    for u in units:
        f.write(f',\n    {json.dumps(u, sort_keys=True)}'.encode())
    f.write(b'\n  ]\n}\n')


def reducer_env(scratch: str, tmp: str, listing: str) -> dict[str, str]:
    """The reducer's whole environment: nothing of the operator's (it may hold chain keys,
    BOID_CHAIN_KEYS) but PATH."""
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": scratch, "TMPDIR": tmp, "LANG": "C.UTF-8",
            "BOID_OUTPUT_DIR": scratch, "BOID_UNIT_DIRS": listing}


def command_line_size(strings: Iterable[str]) -> int:
    """What `strings` take of the kernel's ARG_MAX as arguments or environment: each string with
    its NUL and its pointer (execve(2), "Limits on size of arguments and environment")."""
    return sum(len(os.fsencode(x)) + 1 + 8 for x in strings)


def reducer_args_too_long(n_units: int, dirs: Iterable[str], env: dict[str, str] | None = None) -> str | None:
    """Why the reducer could not be started with these unit directories as its arguments
    (execve's E2BIG), or None: they fit beside the environment within ARG_MAX, less xargs's
    2,048-byte headroom, and none is longer than MAX_ARG_STRLEN (32 pages)."""
    env = reducer_env(*["/" * 4096] * 3) if env is None else env   # its directories: at most PATH_MAX
    room = os.sysconf("SC_ARG_MAX") - command_line_size(f"{k}={v}" for k, v in env.items()) - 2048
    need = longest = 0
    for d in dirs:
        size = len(os.fsencode(d))
        need, longest = need + size + 1 + 8, max(longest, size)
    if need <= room and longest < 32 * 4096:
        return None
    return (f"the reducer gets the {n_units} unit directories as arguments, {need / 1e6:.1f} MB, more than one "
            f"command line holds here ({max(room, 0) / 1e6:.1f} MB besides the environment); set "
            "output.unitDirs: file and read them from the file named by $BOID_UNIT_DIRS, one per line")


def _run_reducer(storage: Storage, out: str, command: str | list[str] | None,
                 units: Sequence[tuple[str, str]], unit_dirs: str = "arguments") -> list[str]:
    if not storage.url.startswith("file:") and "://" in storage.url:
        raise OutputInvalid("reduce: command needs file:// storage (it runs on the operator's machine)")
    argv = ["/bin/sh", "-c", command + ' "$@"', "reduce"] if isinstance(command, str) else list(command or [])
    dirs = [storage.resolve(d) for _, d in units]
    with tempfile.TemporaryDirectory(prefix="boid-reduce-") as scratch, \
            tempfile.TemporaryDirectory(prefix="boid-reduce-in-") as given:
        listing = os.path.join(given, "unit-dirs")   # outside the scratch: not an output
        with open(listing, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(d + "\n" for d in dirs)
        env = reducer_env(scratch, given, listing)
        args = dirs if unit_dirs == "arguments" else []
        if args and (why := reducer_args_too_long(len(dirs), dirs, env)):
            raise OutputInvalid(why)
        try:
            proc = subprocess.run(argv + args, cwd=scratch, env=env,
                                  capture_output=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OutputInvalid(f"reduce command failed: {e}") from None
        if proc.returncode != 0:
            tail = proc.stderr[-300:].decode(errors="replace").strip()
            raise OutputInvalid(f"reduce command exited with code {proc.returncode}: {tail}")
        published = []
        for p in sorted(Path(scratch).rglob("*")):
            if p.is_file():
                rel = p.relative_to(scratch).as_posix()
                storage.publish_atomic(posixpath.join(out, rel), p.read_bytes())
                published.append(posixpath.join(out, rel))
        return published
