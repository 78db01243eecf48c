"""Object metadata, conditions and the base class every resource kind shares.

Kept apart from the kinds themselves so that the store and the engine depend only on this
small surface (name, uid, versions, finalizers, status) and not on any kind's spec.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "cluster.boid.com"
API_VERSION = f"{API_GROUP}/v1alpha1"
CLEANUP_FINALIZER = f"{API_GROUP}/cleanup"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS1123.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: use at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'monte-carlo-1')"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Strict(BaseModel):
    """Base for every model: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_assignment=True,
    )


class ObjectMeta(Strict):
    name: DnsLabel
    uid: str | None = None
    generation: int | None = None
    resource_version: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Condition(Strict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None


class Status(Strict):
    """Common status; each kind extends it."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Resource(Strict):
    """A stored object. Subclasses set KIND/PLURAL/SHORT and narrow `spec` and `status`."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["cluster.boid.com/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: Any
    status: Status | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self, *, with_status: bool = True) -> dict[str, Any]:
        """The wire form (camelCase, no nulls), as `-o yaml|json` shows it."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not with_status:
            data.pop("status", None)
        return data
