"""Turn YAML/JSON spec files into validated resources, or into errors a person can act on.

Every document of every input is checked before anything is returned, so one run reports all the
problems at once (like a compiler), each as `file:line:col: document N (Kind "name"): field.path:
message` plus a hint. Lines come from the YAML node tree (yaml.compose), not from re-parsing, and
pydantic's raw messages are rewritten in plain words. Nothing here raises anything but SpecErrors.

Input is bounded before it can cost much, as Kubernetes' API server bounds a request: the bytes of
one input (files are measured before they are read), the bytes of one document, the nesting depth
(checked while composing, so a 500-deep document is an error, not a RecursionError), and YAML
aliases (counted while composing: an alias may not refer to a node that contains it, and what all
aliases of a document add by expansion is limited, so a 700-byte "billion laughs" is refused
before anything expands it).
"""

from __future__ import annotations

import difflib
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .kinds import UnknownKind, resolve_kind
from .meta import API_GROUP, API_VERSION, Resource

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
"""Files a directory contributes; hidden files and directories (.git, .github) are skipped."""

MAX_INPUT_BYTES = 8 * 1024 * 1024
"""Bytes of specs one input (an apply, a GitSource sync) may hold, all files together: about 7,000
Jobs like the example (2,000 load in 1.6 s on an idle 2-core machine, 7,000 in about 105 MB of
memory). Larger inputs are refused before they are read."""
MAX_DOCUMENT_BYTES = 512 * 1024
"""Bytes of one document: the store keeps each object in one ZooKeeper znode (under 1 MiB)."""
MAX_DEPTH = 64
"""Nesting depth of mappings and lists in one document (the schema itself needs fewer than 10)."""
MAX_ALIAS_NODES = 10_000
"""Nodes that YAML aliases of one document may add when expanded (a shared mapping used a few
times is fine; an alias bomb is not). A scalar counts one node per 100 characters."""


def _kib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


_TOO_MUCH_HINT = ("split the input over several applies (each is all-or-nothing), e.g. one directory "
                  "or file at a time")

# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecError:
    """One problem in one document, with where it is and what to do about it."""

    source: str
    """File name as given, or '<stdin>' / '<string>'."""
    document: int | None
    """1-based index of the document in its source (None: the whole source)."""
    line: int | None
    """1-based line, when known."""
    column: int | None
    """1-based column, when known."""
    path: str
    """Field path in camelCase, e.g. 'spec.workUnits.count' ('' for the document itself)."""
    message: str
    """What is wrong, in plain words."""
    hint: str = ""
    """What to write instead, when we can tell."""
    kind: str | None = None
    """Kind of the document, when it could be told."""
    name: str | None = None
    """metadata.name of the document, when it could be told."""

    @property
    def location(self) -> str:
        out = self.source
        if self.line is not None:
            out += f":{self.line}"
            if self.column is not None:
                out += f":{self.column}"
        return out

    @property
    def document_label(self) -> str:
        if self.document is None:
            return ""
        label = f"document {self.document}"
        if self.kind and self.name:
            label += f' ({self.kind} "{self.name}")'
        elif self.kind:
            label += f" ({self.kind})"
        return label

    def __str__(self) -> str:
        parts = [self.location]
        if self.document_label:
            parts.append(self.document_label)
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class SpecErrors(Exception):
    """All the problems found in an input; raised only when there is at least one."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.errors)
        lines = [str(e) for e in self.errors]
        lines.append(f"{n} error{'s' if n != 1 else ''} found; nothing was applied")
        return "\n".join(lines)


# --- public entry points -----------------------------------------------------------------------


def load_documents(text: str, source: str = "<string>") -> list[Resource]:
    """Every resource in a (multi-document) YAML or JSON text; raises SpecErrors listing all
    problems, including duplicate (kind, name) pairs."""
    resources, errors = _load_text(text, source)
    errors += _duplicates(resources)
    if errors:
        raise SpecErrors(errors)
    return [r for r, _ in resources]


def load_paths(paths: list[str], stdin: IO[str] | str | None = None) -> list[Resource]:
    """Every resource in the given files, directories (recursive, *.yaml/*.yml/*.json, sorted,
    hidden entries skipped) and '-' (read from `stdin`, default sys.stdin), in that order.

    All inputs are checked before anything is returned; raises SpecErrors listing every problem,
    including a (kind, name) defined twice anywhere in the input.
    """
    texts: list[tuple[str, str]] = []
    errors: list[SpecError] = []
    for source, text, problem in _read_inputs(paths, stdin):
        if problem:
            errors.append(SpecError(source, None, None, None, "", problem[0], problem[1]))
            if problem[1] == _TOO_MUCH_HINT:
                break  # read nothing more
        else:
            texts.append((source, text))
    return load_sources(texts, errors)


def load_sources(sources: Iterable[tuple[str, str]], errors: list[SpecError] | None = None) -> list[Resource]:
    """Every resource in (source name, text) pairs, e.g. files read from a git commit; raises
    SpecErrors listing every problem, including a (kind, name) defined twice across sources."""
    resources: list[tuple[Resource, _Where]] = []
    errors = list(errors or [])
    sources = list(sources)
    total = 0
    for source, text in sources:  # measured before anything is parsed
        total += len(text)
        if total > MAX_INPUT_BYTES:
            raise SpecErrors(errors + [SpecError(
                source, None, None, None, "", f"the input reaches more than {_kib(MAX_INPUT_BYTES)} of specs "
                "with this file; nothing was loaded", _TOO_MUCH_HINT)])
    for source, text in sources:
        found, errs = _load_text(text, source)
        resources += found
        errors += errs
    errors += _duplicates(resources)
    if errors:
        raise SpecErrors(errors)
    return [r for r, _ in resources]


# --- reading inputs ----------------------------------------------------------------------------


def _read_inputs(paths: list[str], stdin: IO[str] | str | None):
    """(source, text, problem) for each input file in order; problem is (message, hint).

    Sizes are checked before reading: past MAX_INPUT_BYTES in all, a problem and nothing more."""
    total = 0
    for given in paths:
        if given == "-":
            stream = sys.stdin if stdin is None else stdin
            text = stream[:MAX_INPUT_BYTES + 1] if isinstance(stream, str) else stream.read(MAX_INPUT_BYTES + 1)
            total += len(text) if len(text) > MAX_INPUT_BYTES else len(text.encode("utf-8", errors="replace"))
            if total > MAX_INPUT_BYTES:
                yield "<stdin>", "", (f"stdin holds more than the {_kib(MAX_INPUT_BYTES)} one apply takes; "
                                      "nothing was read past this point", _TOO_MUCH_HINT)
                return
            yield "<stdin>", text, None
            continue
        p = Path(given)
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in SPEC_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            files = [p]
        for f in files:
            try:
                total += f.stat().st_size
            except OSError:
                pass  # reported by _read_file
            if total > MAX_INPUT_BYTES:
                yield str(f), "", _too_much(total, "this file")
                return
            yield _read_file(str(f) if p.is_dir() else given)


def _read_file(name: str):
    try:
        return name, Path(name).read_text(encoding="utf-8"), None
    except FileNotFoundError:
        return name, "", ("no such file or directory", "check the path; use '-' to read stdin")
    except UnicodeDecodeError as exc:
        return name, "", (f"is not UTF-8 text ({exc.reason} at byte {exc.start})", "")
    except OSError as exc:
        return name, "", (f"cannot be read: {exc.strerror or exc}", "")


def _too_much(total: int, what: str) -> tuple[str, str]:
    return (f"the input reaches {_kib(total)} with {what}, over the {_kib(MAX_INPUT_BYTES)} one apply takes; "
            "nothing was read past this point", _TOO_MUCH_HINT)


# --- one text ----------------------------------------------------------------------------------


class _Limit(yaml.YAMLError):
    """A document over one of the limits above; stops reading its source."""

    def __init__(self, mark: Any, message: str, hint: str) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _BoundedComposer(yaml.composer.Composer):
    """A composer that checks depth and aliases while composing each node, before any expansion."""

    def _init_bounds(self) -> None:
        self._depth = 0
        self._open: set[str] = set()  # anchors of the nodes being composed (an alias to one: a cycle)
        self._size: dict[int, int] = {}  # id(node) -> nodes it stands for with its aliases expanded
        self._count = 0  # nodes of the current document, aliases expanded
        self._by_aliases = 0  # of which aliases added

    def compose_document(self) -> Any:
        self._size.clear()
        self._count = self._by_aliases = 0
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _Limit(event.start_mark, f"alias *{event.anchor} refers to a node that contains it",
                             "recursive YAML aliases are not accepted in specs; write the value out")
            node = super().compose_node(parent, index)
            size = self._size.get(id(node), 1)
            self._count += size
            self._by_aliases += size
            if self._by_aliases > MAX_ALIAS_NODES:
                raise _Limit(event.start_mark,
                             f"YAML aliases expand this document by more than {MAX_ALIAS_NODES:,} nodes",
                             "an alias bomb? write the values out, or use fewer aliases")
            return node
        if self._depth >= MAX_DEPTH:
            raise _Limit(event.start_mark, f"nested more than {MAX_DEPTH} levels deep",
                         "specs need only a few levels of nesting; check for a runaway [ or {")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        before = self._count
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)
        self._count += 1 + (len(node.value) // 100 if isinstance(node, ScalarNode) else 0)  # long strings weigh more
        self._size[id(node)] = self._count - before
        return node


class _BoundedLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _BoundedComposer,
                     yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """yaml.SafeLoader with the bounded composer (pure Python: the clearest error messages)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._init_bounds()


_FastBoundedLoader: Any = None
if getattr(yaml, "__with_libyaml__", False):
    class _FastBoundedLoader(_BoundedComposer, yaml.cyaml.CParser,  # type: ignore[no-redef]
                             yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """The same, on libyaml's parser (about 5x faster); any YAML error is re-read by the
        pure-Python loader, so messages do not depend on which one ran."""

        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            self._init_bounds()


@dataclass(frozen=True)
class _Where:
    source: str
    document: int
    line: int
    column: int


class _ReadAgain(Exception):
    """The fast parser met a YAML error: read the text again with the pure-Python one."""


def _load_text(text: str, source: str) -> tuple[list[tuple[Resource, _Where]], list[SpecError]]:
    if _FastBoundedLoader is not None:
        try:
            return _load_text_with(_FastBoundedLoader, text, source)
        except _ReadAgain:
            pass
    return _load_text_with(_BoundedLoader, text, source)


def _load_text_with(make: Any, text: str, source: str) -> tuple[list[tuple[Resource, _Where]], list[SpecError]]:
    fast = make is _FastBoundedLoader
    resources: list[tuple[Resource, _Where]] = []
    errors: list[SpecError] = []
    try:
        loader = make(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        return [], [_reader_error(exc, text, source)]
    index = 0
    try:
        while True:
            index += 1
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
            except _Limit as exc:
                mark = exc.mark
                errors.append(SpecError(source, index, mark.line + 1 if mark else None,
                                        mark.column + 1 if mark else None, "", exc.message, exc.hint))
                break
            except yaml.YAMLError as exc:
                if fast:
                    raise _ReadAgain() from exc
                if isinstance(exc, yaml.MarkedYAMLError):
                    errors.append(_yaml_error(exc, source, index))
                else:
                    errors.append(_reader_error(exc, text, source))
                break
            if node is None:
                continue
            size = node.end_mark.index - node.start_mark.index
            if size > MAX_DOCUMENT_BYTES:
                errors.append(SpecError(
                    source, index, node.start_mark.line + 1, node.start_mark.column + 1, "",
                    f"document is {_kib(size)}, over the {_kib(MAX_DOCUMENT_BYTES)} one object may take",
                    "the store keeps each object in one ZooKeeper node; move bulk data to storage"))
                continue
            dup = _duplicate_keys(node, source, index)
            if dup:
                errors += dup
                continue
            try:
                data = loader.construct_document(node)
            except yaml.YAMLError as exc:
                errors.append(_yaml_error(exc, source, index))
                continue
            if data is None:  # an empty document, e.g. a trailing '---'
                continue
            try:
                resource, errs = _check_document(data, node, source, index)
            except Exception as exc:  # a bug of ours must still not print a stack trace
                errs = [SpecError(source, index, node.start_mark.line + 1,
                                  node.start_mark.column + 1, "",
                                  f"could not be checked ({type(exc).__name__}: {exc})",
                                  "this is a bug in boidctl; please report it")]
                resource = None
            errors += sorted(errs, key=lambda e: (e.line or 0, e.column or 0))
            if resource is not None:
                where = _Where(source, index, *_locate(node, ["metadata", "name"])[:2])
                resources.append((resource, where))
    finally:
        loader.dispose()
    return resources, errors


def _yaml_error(exc: yaml.YAMLError, source: str, index: int) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = "invalid YAML: " + problem + (f" ({context})" if context else "")
    hint = ""
    if "'\\t'" in problem or "\\t" in problem:
        hint = "YAML indentation uses spaces, not tabs"
    elif "mapping values are not allowed" in problem:
        hint = "a value containing ': ' must be quoted, or the indentation is off"
    elif "could not find expected ':'" in problem or "expected <block end>" in problem:
        hint = "check the indentation of this line against the lines above it"
    return SpecError(source, index, mark.line + 1 if mark else None,
                     mark.column + 1 if mark else None, "", message, hint)


def _reader_error(exc: yaml.YAMLError, text: str, source: str) -> SpecError:
    pos = getattr(exc, "position", None)
    line = col = None
    if isinstance(pos, int):
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    reason = getattr(exc, "reason", None) or str(exc)
    char = getattr(exc, "character", None)
    what = f"character #x{char:04x}: {reason}" if isinstance(char, int) else reason
    return SpecError(source, None, line, col, "", f"invalid YAML: {what}",
                     "remove control characters; specs are UTF-8 text")


def _duplicate_keys(node: Node, source: str, index: int) -> list[SpecError]:
    """YAML silently keeps the last of two equal keys; a spec with both is a mistake."""
    errors: list[SpecError] = []

    def walk(n: Node, path: list[Any]) -> None:
        if isinstance(n, MappingNode):
            seen: dict[str, Node] = {}
            for k, v in n.value:
                if isinstance(k, ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        first = seen[k.value].start_mark.line + 1
                        errors.append(SpecError(
                            source, index, k.start_mark.line + 1, k.start_mark.column + 1,
                            _format_path(path + [k.value]),
                            f"duplicate key {k.value!r} (first given on line {first})",
                            "YAML would silently keep only the last one; remove one of them"))
                    seen[k.value] = k
                walk(v, path + [k.value if isinstance(k, ScalarNode) else "?"])
        elif isinstance(n, SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, path + [i])

    walk(node, [])
    return errors


def _check_document(data: Any, node: Node, source: str, index: int):
    def err(path: list[Any], message: str, hint: str = "", kind=None, name=None) -> SpecError:
        line, col, _ = _locate(node, path)
        return SpecError(source, index, line, col, _format_path(path), message, hint, kind, name)

    if not isinstance(data, dict):
        return None, [err([], f"a document must be a mapping, not {_describe(data)}",
                          "start it with apiVersion:, kind:, metadata: and spec:")]
    errors: list[SpecError] = []
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None

    cls: type[Resource] | None = None
    kind = data.get("kind")
    if kind is None:
        errors.append(err(["kind"], "required field is missing",
                          "add `kind:` with one of Protocol, Job, Contributor, GitSource"))
    elif not isinstance(kind, str):
        errors.append(err(["kind"], f"must be a string (got {_describe(kind)})"))
    else:
        try:
            cls = resolve_kind(kind)
        except UnknownKind as exc:
            errors.append(err(["kind"], f"unknown kind {kind!r}", exc.hint, name=name))
        else:
            if kind != cls.KIND:
                errors.append(err(["kind"], f"must be written {cls.KIND!r} (got {kind!r})",
                                  f"kind: {cls.KIND}", cls.KIND, name))
    label_kind = cls.KIND if cls else None

    api = data.get("apiVersion")
    if api is None:
        errors.append(err(["apiVersion"], "required field is missing",
                          f"add `apiVersion: {API_VERSION}`", label_kind, name))
    elif api != API_VERSION:
        hint = f"write `apiVersion: {API_VERSION}`"
        if isinstance(api, str) and api.startswith(API_GROUP + "/"):
            hint = f"this release serves only {API_VERSION}"
        errors.append(err(["apiVersion"], f"unsupported apiVersion {api!r}", hint,
                          label_kind, name))
    if cls is None:
        return None, errors

    try:
        resource = cls.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raw = [e for e in exc.errors() if e["loc"][:1] not in (("apiVersion",), ("kind",))]
        errors += _convert_errors(raw, cls, data, node, source, index, name)
        return None, errors
    return (resource if not errors else None), errors


# --- pydantic errors into SpecErrors -----------------------------------------------------------

_NUMBER_TYPES = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                 "float_from_str"}


def _convert_errors(raw, cls, data, node, source, index, name) -> list[SpecError]:
    grouped: dict[tuple, list[tuple[dict, list[Any]]]] = {}
    for e in raw:
        path = _clean_loc(e["loc"], data, e["type"] == "missing")
        if e["type"] == "boid_field" and e.get("ctx", {}).get("field"):
            path += _parse_path(e["ctx"]["field"])
        grouped.setdefault(tuple(path), []).append((e, path))
    out: list[SpecError] = []
    for key, items in grouped.items():
        path = list(key)
        line, col, scalar = _locate(node, path)
        messages = [_explain_error(e, path, cls, scalar) for e, _ in items]
        if len(messages) == 1:
            message, hint = messages[0]
        elif {e["type"] for e, _ in items} <= _NUMBER_TYPES:
            value = items[0][0]["input"]
            message, hint = f"must be a number (got {_describe(value)})", ""
            if isinstance(value, str):
                hint = f"write it without quotes: {value.strip()}"
        else:
            seen: list[str] = []
            for m, _ in messages:
                if m not in seen:
                    seen.append(m)
            message = "; or ".join(seen)
            hint = next((h for _, h in messages if h), "")
        out.append(SpecError(source, index, line, col, _format_path(path), message, hint,
                             cls.KIND, name))
    return out


def _clean_loc(loc: tuple, data: Any, missing: bool) -> list[Any]:
    """Keep the parts of a pydantic location that are real keys/indices of the input; drop
    union member tags and '[key]' markers. A missing field's own name is kept."""
    out: list[Any] = []
    cur = data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif missing and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return out


def _parse_path(text: str) -> list[Any]:
    out: list[Any] = []
    for piece in filter(None, text.split(".")):
        m = re.match(r"^([^\[]*)((?:\[\d+\])*)$", piece)
        if not m:
            out.append(piece)
            continue
        if m.group(1):
            out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return out


def _format_path(path: list[Any]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _locate(node: Node, path: list[Any]) -> tuple[int, int, ScalarNode | None]:
    """(line, column) of the deepest node along `path`, 1-based; for a mapping entry the key's
    position. A part that is not there (a missing field) stops the walk at its parent."""
    mark = node.start_mark
    cur: Node = node
    for part in path:
        if isinstance(cur, MappingNode):
            for k, v in reversed(cur.value):  # YAML keeps the last of equal keys
                if isinstance(k, ScalarNode) and k.value == str(part):
                    mark, cur = k.start_mark, v
                    break
            else:
                return mark.line + 1, mark.column + 1, None
        elif isinstance(cur, SequenceNode) and isinstance(part, int) and part < len(cur.value):
            cur = cur.value[part]
            mark = cur.start_mark
        else:
            return mark.line + 1, mark.column + 1, None
    return mark.line + 1, mark.column + 1, cur if isinstance(cur, ScalarNode) else None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _explain_error(e: dict, path: list[Any], cls: type[BaseModel],
                   scalar: ScalarNode | None) -> tuple[str, str]:
    """Plain words for one pydantic error: (message, hint)."""
    t, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    got = f" (got {_describe(value)})"
    if t == "missing":
        parent = _format_path(path[:-1]) or "the top of the document"
        info = _field_info(cls, path)
        what = f" ({_first_sentence(info.description)})" if info and info.description else ""
        return "required field is missing", f"add `{path[-1]}:` under {parent}{what}"
    if t == "extra_forbidden":
        allowed = _allowed_fields(cls, path[:-1])
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif allowed:
            hint = "valid fields here: " + ", ".join(allowed)
        else:
            hint = ""
        return "unknown field", hint
    if t == "boid_field":
        return e["msg"], ctx.get("hint", "")
    if t in ("value_error", "assertion_error"):
        msg = re.sub(r"^(Value|Assertion) error, ", "", e["msg"])
        return msg, ""
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if t in bounds:
        op, k = bounds[t]
        return f"must be {op} {ctx.get(k)}{got}", ""
    quote_hint = ""
    if scalar is not None and not scalar.style and isinstance(value, (bool, int, float)):  # plain: None or ""
        quote_hint = (f"YAML reads {scalar.value} as a {'boolean' if isinstance(value, bool) else 'number'}; "
                      f"quote it: \"{scalar.value}\"")
    simple = {
        "string_type": "must be a string",
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number", "float_parsing": "must be a number",
        "bool_type": "must be true or false", "bool_parsing": "must be true or false",
        "list_type": "must be a list", "tuple_type": "must be a list",
        "dict_type": "must be a mapping (key: value pairs)",
        "model_type": "must be a mapping of fields",
        "model_attributes_type": "must be a mapping of fields",
        "datetime_type": "must be a date-time like 2025-01-31T12:00:00Z",
        "datetime_parsing": "must be a date-time like 2025-01-31T12:00:00Z",
        "datetime_from_date_parsing": "must be a date-time like 2025-01-31T12:00:00Z",
    }
    if t in simple:
        hint = quote_hint if t == "string_type" else ""
        if t in _NUMBER_TYPES | {"bool_type", "bool_parsing"} and isinstance(value, str):
            hint = f"write it without quotes: {value.strip()}"
        return simple[t] + got, hint
    if t == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5) if choices else []
        return (f"must be one of {', '.join(choices) or ctx.get('expected')}{got}",
                f"did you mean {close[0]!r}?" if close else "")
    if t in ("too_short", "too_long"):
        n = ctx.get("min_length" if t == "too_short" else "max_length")
        word = "at least" if t == "too_short" else "at most"
        return f"must have {word} {n} item{'s' if n != 1 else ''} (got {ctx.get('actual_length')})", ""
    if t == "string_too_short":
        n = ctx.get("min_length")
        return ("must not be empty" if n == 1 else f"must be at least {n} characters"), ""
    if t == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters", ""
    if t == "string_pattern_mismatch":
        return f"does not match the pattern {ctx.get('pattern')}{got}", ""
    return e["msg"][:1].lower() + e["msg"][1:], ""


# --- walking the models (for hints) ------------------------------------------------------------


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, looking through Optional, list, dict and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _walk_model(cls: type[BaseModel], path: list[Any]):
    """(model, field info) for the last named part of `path`; None when it leaves the models."""
    model: type[BaseModel] | None = cls
    info = None
    for part in path:
        if isinstance(part, int):
            continue
        if model is None:
            return None, None
        by_alias = {(f.alias or n): f for n, f in model.model_fields.items()}
        if part not in by_alias:
            # a dict key (sweep parameter, env name): stay on the same value model
            continue
        info = by_alias[part]
        model = _submodel(info.annotation)
    return model, info


def _field_info(cls: type[BaseModel], path: list[Any]):
    return _walk_model(cls, path)[1]


def _allowed_fields(cls: type[BaseModel], parent: list[Any]) -> list[str]:
    model = cls if not parent else _walk_model(cls, parent)[0]
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.match(r"^(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).rstrip(".")


# --- duplicates --------------------------------------------------------------------------------


def _duplicates(resources: list[tuple[Resource, _Where]]) -> list[SpecError]:
    first: dict[tuple[str, str], _Where] = {}
    errors: list[SpecError] = []
    for r, where in resources:
        key = (r.KIND, r.name)
        if key in first:
            f = first[key]
            errors.append(SpecError(
                where.source, where.document, where.line, where.column, "metadata.name",
                f'duplicate {r.KIND} "{r.name}": also defined at {f.source}:{f.line} '
                f"(document {f.document})",
                "each object needs a unique name within its kind", r.KIND, r.name))
        else:
            first[key] = where
    return errors


__all__ = ["SpecError", "SpecErrors", "load_documents", "load_paths", "SPEC_SUFFIXES"]
