"""Merging a reconcile's conditions into stored status.

lastTransitionTime changes only when a condition's status changes, as in Kubernetes, so a user
can tell how long something has been failing; reason and message always reflect the latest look.
"""

from __future__ import annotations

from datetime import datetime

from boidcluster.model.meta import Condition, utcnow


def merge_conditions(old: list[Condition], new: list[Condition], now: datetime | None = None) -> list[Condition]:
    now = now or utcnow()
    by_type = {c.type: c for c in old}
    for c in new:
        prev = by_type.get(c.type)
        if prev is not None and prev.status == c.status:
            when = prev.last_transition_time or now
        else:
            when = now
        by_type[c.type] = c.model_copy(update={"last_transition_time": when})
    return list(by_type.values())
