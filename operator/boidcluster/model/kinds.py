"""The registry of resource kinds, and the lookup that turns what a user typed into a kind.

`boidctl get proto`, `get protocols`, `get Protocol` and the `kind:` of a document all resolve
here, so every entry point accepts the same names and suggests the same corrections.
"""

from __future__ import annotations

import difflib
from typing import Any

from .meta import Resource
from .resources import Contributor, GitSource, Job, Protocol

KINDS: dict[str, type[Resource]] = {cls.KIND: cls for cls in (Protocol, Job, Contributor, GitSource)}
"""Every kind by its canonical name (the `kind:` field), in dependency order."""


class UnknownKind(ValueError):
    """A name that is no kind; `hint` suggests the closest one."""

    def __init__(self, text: str, hint: str) -> None:
        self.text = text
        self.hint = hint
        super().__init__(f"unknown kind {text!r}" + (f"; {hint}" if hint else ""))


def kind_names(cls: type[Resource]) -> tuple[str, ...]:
    """All names a kind answers to, lowercased: singular, plural, short names."""
    return (cls.KIND.lower(), cls.PLURAL, *cls.SHORT)


def resolve_kind(text: str) -> type[Resource]:
    """The kind named by `text`: kind, singular, plural or short name, any case."""
    key = str(text).strip().lower()
    for cls in KINDS.values():
        if key in kind_names(cls):
            return cls
    names = {n: cls.KIND for cls in KINDS.values() for n in kind_names(cls)}
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {names[close[0]]!r}?"
    else:
        hint = "known kinds: " + ", ".join(KINDS)
    raise UnknownKind(str(text), hint)


def parse_resource(data: dict[str, Any]) -> Resource:
    """Validate one object (as stored or sent on the wire) into its kind's model.

    Raises UnknownKind or pydantic.ValidationError; use the loader for user-facing errors.
    """
    return resolve_kind(data.get("kind", "")).model_validate(data)


__all__ = ["KINDS", "UnknownKind", "kind_names", "resolve_kind", "parse_resource"]
