"""CRD-like schemas generated from the models, and `explain` text read back from them.

The models are the single source of truth: crds/<kind>.yaml is generated (and checked in, so a
review shows schema changes; a test fails when it is stale), and `boidctl explain` reads the same
schema, so the documentation a user sees is the one the validator enforces.
"""

from __future__ import annotations

import copy
import difflib
import textwrap
from pathlib import Path
from typing import Any

import yaml

from .kinds import KINDS, resolve_kind
from .meta import API_GROUP, API_VERSION, Resource

VERSION = API_VERSION.split("/", 1)[1]

PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "Protocol": [
        {"name": "Researcher", "type": "string", "jsonPath": ".spec.researcher"},
        {"name": "Fund", "type": "string", "jsonPath": ".status.fundBalance"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    ],
    "Job": [
        {"name": "Protocol", "type": "string", "jsonPath": ".spec.protocol"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Validated", "type": "integer", "jsonPath": ".status.units.validated"},
        {"name": "Total", "type": "integer", "jsonPath": ".status.units.total"},
    ],
    "Contributor": [
        {"name": "Account", "type": "string", "jsonPath": ".spec.account"},
        {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
        {"name": "Unpaid", "type": "integer", "jsonPath": ".status.unpaidTime"},
    ],
    "GitSource": [
        {"name": "Repo", "type": "string", "jsonPath": ".spec.repo"},
        {"name": "Ref", "type": "string", "jsonPath": ".spec.ref"},
        {"name": "Commit", "type": "string", "jsonPath": ".status.syncedCommit"},
    ],
}
"""Columns `boidctl get` shows after NAME, as a CRD's additionalPrinterColumns."""


class UnknownField(ValueError):
    """A field path that the kind does not have; `hint` suggests the closest field."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.hint = hint
        super().__init__(message + (f"; {hint}" if hint else ""))


# --- schema ------------------------------------------------------------------------------------


def openapi_schema(cls: type[Resource]) -> dict[str, Any]:
    """The kind's openAPIV3Schema: camelCase, $refs inlined, nullable instead of null unions."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _clean(raw, defs)


def _clean(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_clean(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[1]])
        target.update(node)  # the field's own description and default win over the model's
        node = target
    any_of = node.get("anyOf")
    if any_of and any(s == {"type": "null"} for s in any_of):
        rest = [s for s in any_of if s != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            inner = rest[0]
            node = {**_clean(inner, defs), **{k: v for k, v in node.items()}}
        else:
            node["anyOf"] = rest
        node["nullable"] = True
        if node.get("default", ...) is None:
            del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {k: _clean(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = _clean(value, defs)
        else:
            out[key] = value
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    return _ordered(out)


_ORDER = ("description", "type", "nullable", "enum", "format", "pattern", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
          "maxItems", "default", "examples", "anyOf", "x-kubernetes-int-or-string", "items",
          "additionalProperties", "required", "properties")


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(d, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
    return {k: d[k] for k in keys}


def crd(cls: type[Resource]) -> dict[str, Any]:
    """A CustomResourceDefinition-shaped document for the kind."""
    schema = openapi_schema(cls)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "shortNames": list(cls.SHORT),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS.get(cls.KIND, []),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render_crd(cls: type[Resource]) -> str:
    """The CRD as YAML text, exactly as written to crds/<kind>.yaml."""
    header = (f"# Generated from boidcluster.model ({cls.__module__}.{cls.__name__}); do not edit.\n"
              "# Regenerate with: boidctl crds --write crds/  (or python -m boidcluster.model.crd crds)\n")
    return header + yaml.safe_dump(crd(cls), sort_keys=False, width=100, allow_unicode=True)


def write_crds(directory: str | Path) -> list[Path]:
    """Write crds/<kind>.yaml (kind lowercased) for every kind; returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in KINDS.values():
        path = out / f"{cls.KIND.lower()}.yaml"
        path.write_text(render_crd(cls), encoding="utf-8")
        written.append(path)
    return written


# --- explain -----------------------------------------------------------------------------------


def _type_name(s: dict[str, Any]) -> str:
    if s.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    t = s.get("type")
    if t == "array":
        return "[]" + _type_name(s.get("items", {}))
    if t == "object":
        if "properties" in s:
            return "Object"
        extra = s.get("additionalProperties")
        return f"map[string]{_type_name(extra)}" if isinstance(extra, dict) else "Object"
    if t:
        return str(t)
    alternatives = s.get("anyOf") or s.get("oneOf")
    if alternatives:
        names = [_type_name(x) for x in alternatives]
        if set(names) <= {"string", "integer", "number", "boolean"} and len(names) > 2:
            return "scalar"
        return "|".join(names)
    return "Object"


def _children(s: dict[str, Any]) -> dict[str, Any] | None:
    """The schema holding named fields below `s` (looking through arrays and maps)."""
    while True:
        if "properties" in s:
            return s
        if s.get("type") == "array" and isinstance(s.get("items"), dict):
            s = s["items"]
        elif isinstance(s.get("additionalProperties"), dict):
            s = s["additionalProperties"]
        elif "anyOf" in s or "oneOf" in s:
            objs = [x for x in s.get("anyOf") or s["oneOf"] if _children(x) is not None]
            if not objs:
                return None
            s = objs[0]
        else:
            return None


def explain(kind: str, field_path: str = "") -> str:
    """kubectl-explain-like text for a kind or one of its fields.

    `kind` is any name resolve_kind accepts and may carry the path (`job.spec.workUnits`);
    `field_path` is dotted camelCase (`spec.workUnits`). Raises UnknownKind or UnknownField.
    """
    if "." in kind and not field_path:
        kind, field_path = kind.split(".", 1)
    cls = resolve_kind(kind)
    schema = openapi_schema(cls)
    node, required_here, walked = schema, False, []
    for part in [p for p in field_path.split(".") if p]:
        holder = _children(node)
        props = holder.get("properties", {}) if holder else {}
        if part not in props:
            where = ".".join([cls.KIND.lower(), *walked])
            close = difflib.get_close_matches(part, list(props), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else (
                "fields here: " + ", ".join(props) if props else f"{where} has no fields")
            raise UnknownField(f"field {part!r} does not exist in {where}", hint)
        required_here = part in holder.get("required", [])
        node = props[part]
        walked.append(part)

    lines = [f"KIND:     {cls.KIND}", f"VERSION:  {API_VERSION}", ""]
    if walked:
        lines += [f"FIELD:    {walked[-1]} <{_type_name(node)}>"
                  + ("  -required-" if required_here else ""),
                  f"PATH:     {cls.KIND.lower()}.{'.'.join(walked)}",
                  f"TYPE:     {_type_name(node)}", ""]
    lines.append("DESCRIPTION:")
    lines += _wrap(node.get("description", "<empty>"), 4)
    extras = _facts(node)
    if extras:
        lines += [""] + [f"    {x}" for x in extras]
    holder = _children(node)
    if holder is not None and holder.get("properties"):
        lines += ["", "FIELDS:"]
        required = set(holder.get("required", []))
        for name, sub in holder["properties"].items():
            tag = "  -required-" if name in required else ""
            lines.append(f"  {name}\t<{_type_name(sub)}>{tag}")
            lines += _wrap(sub.get("description", "<no description>"), 4)
            facts = _facts(sub)
            if facts:
                lines += [f"    ({'; '.join(facts)})"]
            lines.append("")
        while lines and lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def _facts(s: dict[str, Any]) -> list[str]:
    facts = []
    if "default" in s and s["default"] not in ({}, [], None):
        facts.append(f"default: {s['default']}")
    if "enum" in s and len(s["enum"]) > 1:
        facts.append("one of: " + ", ".join(str(v) for v in s["enum"]))
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")):
        if key in s:
            facts.append(f"{word} {s[key]}")
    return facts


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, width=80, initial_indent=" " * indent,
                         subsequent_indent=" " * indent) or [" " * indent]


def main(argv: list[str] | None = None) -> int:
    """`python -m boidcluster.model.crd DIR` regenerates the checked-in CRDs."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    for path in write_crds(args[0] if args else "crds"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["PRINTER_COLUMNS", "UnknownField", "openapi_schema", "crd", "render_crd",
           "write_crds", "explain"]
