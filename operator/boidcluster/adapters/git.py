"""Read spec files from a git repository at a ref and path (GitOps), through the git CLI.

Why the CLI and not a library: git itself speaks every transport (local paths, file://, https,
ssh) with the user's usual credentials, and there is no pure-Python git in our dependencies.

How it is shaped:
- Each repository gets one bare mirror in a cache directory (named by a hash of the URL); every
  read fetches all branches and tags into it and resolves the ref there (branch, tag, full ref
  or commit id). A fetch never checks anything out: files are read from the object database
  with `ls-tree` and one `cat-file --batch`, so no working tree, no hooks, no filters run.
- Hooks are disabled (`core.hooksPath=/dev/null`), the `ext::` transport is refused, prompts are
  off (GIT_TERMINAL_PROMPT=0, ssh BatchMode), and every git call has a timeout.
- Anything that goes wrong is a typed `GitError` with a `reason` (RepoUnreachable, RefNotFound,
  PathNotFound, GitTimeout). An unreadable source is an error, NEVER an empty desired state:
  returning "no files" for a repository we could not read would make a sync prune everything.
- A per-mirror lock (a thread lock plus flock) keeps the operator and a concurrent
  `boidctl sync` from fetching into the same mirror at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from boidcluster.model.loader import MAX_INPUT_BYTES

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
"""Files a sync reads (as `boidctl apply -f DIR` does); hidden files and directories are skipped."""

DEFAULT_TIMEOUT = 120.0

_SRC = "refs/boid-src"  # where a mirror keeps the fetched branches and tags
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")


# -- errors -------------------------------------------------------------------------------------
class GitError(Exception):
    """A repository, ref or path that cannot be read. `reason` is a CamelCase condition reason."""

    reason = "GitError"

    def __init__(self, message: str, *, repo: str = "", ref: str = "") -> None:
        super().__init__(message)
        self.repo, self.ref = repo, ref


class RepoUnreachable(GitError):
    """The repository does not exist, is not a git repository, or cannot be reached."""

    reason = "RepoUnreachable"


class RefNotFound(GitError):
    """The repository has no branch, tag or commit by that name."""

    reason = "RefNotFound"


class PathNotFound(GitError):
    """The commit has no such directory (a typo, or the specs moved)."""

    reason = "PathNotFound"


class InputTooLarge(GitError):
    """The spec files under the path hold more than one input may (model.loader.MAX_INPUT_BYTES)."""

    reason = "InputTooLarge"


class GitTimeout(GitError):
    """git did not finish in time (slow network, huge repository)."""

    reason = "GitTimeout"


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecFile:
    path: str
    """Path inside the repository, e.g. 'protocols/monte-carlo.yaml' (used in error messages)."""
    text: str


@dataclass(frozen=True)
class Snapshot:
    """The spec files of one commit. Unpacks as `(commit, files)`."""

    repo: str
    ref: str
    path: str
    commit: str
    files: list[SpecFile] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.commit, self.files))


# -- the reader ---------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """$BOID_GIT_CACHE, else $BOID_HOME/git-cache, else ~/.boid/git-cache."""
    if os.environ.get("BOID_GIT_CACHE"):
        return Path(os.environ["BOID_GIT_CACHE"])
    home = Path(os.environ.get("BOID_HOME") or Path.home() / ".boid")
    return home / "git-cache"


def normalize_repo(repo: str) -> str:
    """A local path becomes absolute (so the mirror name does not depend on the cwd); URLs and
    scp-like addresses (`git@host:org/repo.git`) stay as given."""
    repo = repo.strip()
    if not repo:
        raise RepoUnreachable("the repository is empty: give a URL or a local path", repo=repo)
    if repo.startswith("-"):
        raise RepoUnreachable(f"invalid repository {repo!r}: must not start with '-'", repo=repo)
    if "://" in repo:
        if repo.lower().startswith("ext::"):
            raise RepoUnreachable("the ext:: transport is not allowed", repo=repo)
        return repo
    if re.match(r"^[\w.-]+@[\w.-]+:", repo) or "::" in repo:
        if "::" in repo:
            raise RepoUnreachable(f"remote helpers ({repo.split('::')[0]}::) are not allowed", repo=repo)
        return repo
    return str(Path(repo).expanduser().resolve())


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class GitRepos:
    """Fetches repositories into bare mirrors under `cache_dir` and reads spec files from them."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, git: str = "git") -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.timeout = timeout
        self.git = git

    # -- public ---------------------------------------------------------------------------------
    def fetch(self, repo: str, ref: str = "main", path: str = ".") -> Snapshot:
        """The spec files under `path` at `ref` of `repo` (fetched now). Raises GitError."""
        url = normalize_repo(repo)
        ref = (ref or "").strip()
        if not ref or ref.startswith("-") or any(c in ref for c in " ~^:?*[\\") or ".." in ref:
            raise RefNotFound(f"invalid ref {ref!r}: give a branch, tag or commit id", repo=repo, ref=ref)
        sub = _clean_path(path, repo, ref)
        mirror = self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with _thread_lock(str(mirror)), open(str(mirror) + ".lock", "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            try:
                self._ensure_mirror(mirror)
                self._fetch(mirror, url, repo)
                commit = self._resolve(mirror, ref, repo)
                files = self._read(mirror, commit, sub, repo, ref)
            finally:
                fcntl.flock(lockf, fcntl.LOCK_UN)
        return Snapshot(repo=repo, ref=ref, path=sub or ".", commit=commit, files=files)

    # -- steps ----------------------------------------------------------------------------------
    def _ensure_mirror(self, mirror: Path) -> None:
        if (mirror / "HEAD").exists():
            return
        self._git(["init", "--bare", "--quiet", str(mirror)], what="create the cache mirror")

    def _fetch(self, mirror: Path, url: str, repo: str) -> None:
        if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):
            p = Path(url)
            if not p.exists():
                raise RepoUnreachable(f"repository {repo!r} does not exist", repo=repo)
        proc = self._git(
            ["--git-dir", str(mirror), "fetch", "--quiet", "--force", "--prune", "--no-tags",
             "--no-write-fetch-head", "--no-recurse-submodules", url,
             f"+refs/heads/*:{_SRC}/heads/*", f"+refs/tags/*:{_SRC}/tags/*"],
            what=f"fetch {repo}", check=False)
        if proc.returncode != 0:
            raise RepoUnreachable(
                f"cannot read repository {repo!r}: {_last_line(proc.stderr) or 'git fetch failed'}",
                repo=repo)

    def _resolve(self, mirror: Path, ref: str, repo: str) -> str:
        candidates = []
        if ref.startswith("refs/heads/") or ref.startswith("refs/tags/"):
            candidates.append(f"{_SRC}/{ref[len('refs/'):]}")
        else:
            candidates += [f"{_SRC}/heads/{ref}", f"{_SRC}/tags/{ref}"]
        if _SHA.match(ref):
            candidates.append(ref)
        for cand in candidates:
            proc = self._git(["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet",
                              "--end-of-options", f"{cand}^{{commit}}"], what="resolve ref", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return proc.stdout.strip()
        raise RefNotFound(f"repository {repo!r} has no branch, tag or commit {ref!r}", repo=repo, ref=ref)

    def _read(self, mirror: Path, commit: str, sub: str, repo: str, ref: str) -> list[SpecFile]:
        gd = ["--git-dir", str(mirror)]
        if sub:
            kind = self._git([*gd, "cat-file", "-t", f"{commit}:{sub}"], what="look up path", check=False)
            if kind.returncode == 0 and kind.stdout.strip() == "blob":
                pass  # one file: ls-tree lists just it
            elif kind.returncode != 0 or kind.stdout.strip() != "tree":
                raise PathNotFound(f"{repo!r} at {ref} ({commit[:12]}) has no directory {sub!r}",
                                   repo=repo, ref=ref)
        listing = self._git([*gd, "ls-tree", "-r", "-l", "-z", "--full-tree", commit, "--", *( [sub] if sub else [])],
                            what="list files").stdout
        blobs: list[tuple[str, str]] = []
        total = 0
        for entry in filter(None, listing.split("\0")):
            meta, _, name = entry.partition("\t")
            mode, otype, sha, size = meta.split()
            if otype != "blob" or mode == "120000":  # skip submodules and symlinks
                continue
            rel = PurePosixPath(name).relative_to(sub) if sub and name != sub else PurePosixPath(name)
            if any(part.startswith(".") for part in rel.parts):
                continue
            if rel.suffix.lower() in SPEC_SUFFIXES:
                blobs.append((name, sha))
                total += int(size)
        if total > MAX_INPUT_BYTES:  # measured before reading a byte of them
            raise InputTooLarge(f"the spec files under {sub or '/'!r} at {ref} ({commit[:12]}) hold "
                                f"{total / 1024 / 1024:.1f} MiB, over the {MAX_INPUT_BYTES / 1024 / 1024:.1f} MiB one "
                                "sync takes; point spec.path at a smaller directory (one GitSource each)",
                                repo=repo, ref=ref)
        blobs.sort()
        if not blobs:
            return []
        proc = self._run([self.git, *_SAFE, *gd, "cat-file", "--batch"],
                         input_bytes="".join(f"{sha}\n" for _, sha in blobs).encode(), what="read files")
        out, pos, files = proc.stdout, 0, []
        for name, sha in blobs:
            nl = out.index(b"\n", pos)
            header = out[pos:nl].split()
            size = int(header[2])
            data = out[nl + 1: nl + 1 + size]
            pos = nl + 1 + size + 1
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("utf-8", errors="replace")
            files.append(SpecFile(name, text))
        return files

    # -- plumbing ------------------------------------------------------------------------------
    def _git(self, args: list[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = self._run([self.git, *_SAFE, *args], what=what)
        text = subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode("utf-8", "replace"),
                                           proc.stderr.decode("utf-8", "replace"))
        if check and proc.returncode != 0:
            raise GitError(f"git failed to {what}: {_last_line(text.stderr)}")
        return text

    def _run(self, cmd: list[str], *, what: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=self.timeout,
                                  env=_env(), stdin=None if input_bytes is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GitTimeout(f"git did not {what} within {self.timeout:g}s") from None
        except FileNotFoundError:
            raise GitError(f"the git command ({self.git}) is not installed") from None


_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "protocol.ext.allow=never",
         "-c", "core.fsmonitor=false", "-c", "credential.interactive=never",
         "-c", "gc.auto=0", "-c", "maintenance.auto=false"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", SSH_ASKPASS="true",
               GIT_SSH_COMMAND="ssh -o BatchMode=yes", LC_ALL="C", GIT_CONFIG_NOSYSTEM="1")
    return env


def _clean_path(path: str, repo: str, ref: str) -> str:
    p = (path or ".").strip().replace("\\", "/")
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if ".." in parts or p.startswith("-"):
        raise PathNotFound(f"invalid path {path!r}: stay inside the repository (no '..')", repo=repo, ref=ref)
    return "/".join(parts)


def _last_line(text: str) -> str:
    """git's own message: the `fatal:` line when there is one, else the last line."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    fatal = [ln[len("fatal:"):].strip() for ln in lines if ln.startswith("fatal:")]
    return fatal[0] if fatal else (lines[-1] if lines else "")


__all__ = ["GitError", "GitRepos", "GitTimeout", "PathNotFound", "RefNotFound", "RepoUnreachable",
           "SPEC_SUFFIXES", "Snapshot", "SpecFile", "default_cache_dir", "normalize_repo"]
