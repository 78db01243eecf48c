"""How objects look on a terminal: kubectl-style tables (-o table|wide), YAML and JSON.

Table columns are the CRD's additionalPrinterColumns (model.crd.PRINTER_COLUMNS), evaluated as
the small jsonPath subset kubectl uses there, so the table and the schema can never disagree.
Columns with priority > 0 show only with -o wide. A missing field prints as "<none>".
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

import yaml

from boidcluster.model.crd import PRINTER_COLUMNS
from boidcluster.model.meta import Resource

_STEP = re.compile(r"\.([A-Za-z0-9_]+)|\[\?\(@\.([A-Za-z0-9_]+)==\"([^\"]*)\"\)\]")


def json_path(data: Any, path: str) -> Any:
    """Evaluate `.a.b`, `.list[?(@.key=="v")].field` against plain JSON data."""
    pos, cur = 0, data
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            raise ValueError(f"unsupported jsonPath {path!r} at {path[pos:]!r}")
        pos = m.end()
        field, key, value = m.groups()
        if field is not None:
            cur = cur.get(field) if isinstance(cur, dict) else None
        else:
            cur = next((x for x in cur if isinstance(x, dict) and str(x.get(key)) == value), None) \
                if isinstance(cur, list) else None
        if cur is None:
            return None
    return cur


def age(ts: str | None, now: datetime | None = None) -> str:
    if not ts:
        return "<unknown>"
    then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    secs = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= 2 * size or unit == "m":
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "<none>"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def table(kind: str, objs: Iterable[Resource], wide: bool = False, headers: bool = True) -> str:
    cols = [c for c in PRINTER_COLUMNS.get(kind, []) if wide or int(c.get("priority", 0)) == 0]
    heads = ["NAME"] + [c["name"].upper() for c in cols] + ["AGE"]
    rows = [heads] if headers else []
    for o in objs:
        d = o.to_dict()
        rows.append([d["metadata"]["name"]] + [_cell(json_path(d, c["jsonPath"])) for c in cols]
                    + [age(d["metadata"].get("creationTimestamp"))])
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def as_yaml(objs: list[Resource], single: bool) -> str:
    docs = [o.to_dict() for o in objs]
    if single:
        return yaml.safe_dump(docs[0], sort_keys=False)
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, sort_keys=False)


def as_json(objs: list[Resource], single: bool) -> str:
    docs = [o.to_dict() for o in objs]
    return json.dumps(docs[0] if single else {"apiVersion": "v1", "kind": "List", "items": docs}, indent=2)


def progress(obj: Resource, width: int = 30) -> str:
    """A job's progress bar from status.units, e.g. `[#########.....] 12/40 units (2 running)`."""
    u = json_path(obj.to_dict(), ".status.units") or {}
    total = u.get("total") or 0
    if not total:
        return ""
    done = u.get("succeeded", 0) + u.get("failed", 0)
    filled = int(width * done / total)
    extra = ", ".join(f"{u[k]} {k}" for k in ("running", "failed") if u.get(k))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} units" + (f" ({extra})" if extra else "")


def describe(obj: Resource) -> str:
    d = obj.to_dict()
    m = d["metadata"]
    lines = [
        f"Name:               {m['name']}",
        f"Kind:               {d['kind']}",
        f"UID:                {m.get('uid', '<none>')}",
        f"Labels:             {_kv(m.get('labels'))}",
        f"Annotations:        {_kv(m.get('annotations'))}",
        f"Created:            {m.get('creationTimestamp', '<unknown>')} ({age(m.get('creationTimestamp'))} ago)",
        f"Generation:         {m.get('generation', '<none>')}",
        f"Resource version:   {m.get('resourceVersion', '<none>')}",
    ]
    if m.get("finalizers"):
        lines.append(f"Finalizers:         {', '.join(m['finalizers'])}")
    if m.get("deletionTimestamp"):
        lines.append(f"Deletion requested: {m['deletionTimestamp']}")
    lines += ["Spec:", _indent(yaml.safe_dump(d.get("spec", {}), sort_keys=False))]
    status = dict(d.get("status") or {})
    conditions = status.pop("conditions", [])
    if status:
        lines += ["Status:", _indent(yaml.safe_dump(status, sort_keys=False))]
    lines.append("Conditions:")
    if not conditions:
        lines.append("  <none>")
    else:
        rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]] + [
            [c["type"], c["status"], c.get("reason") or "", age(c.get("lastTransitionTime")), c.get("message") or ""]
            for c in conditions
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  " + "   ".join([*(c.ljust(w) for c, w in zip(r[:4], widths)), r[4]]).rstrip() for r in rows]
    return "\n".join(lines)


def _kv(d: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (d or {}).items()) or "<none>"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())
