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
from pydantic_core import PydanticCustomError

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


def field_error(field: str, message: str, hint: str = "") -> PydanticCustomError:
    """An error a model validator raises about one of its fields (dotted camelCase sub-path).

    Cross-field checks run on the whole model, so pydantic would place them at the model; the
    loader appends `field` to the location so the user is pointed at the line that is wrong.
    """
    return PydanticCustomError("boid_field", message, {"field": field, "hint": hint})


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class Strict(BaseModel):
    """Base for every model: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_assignment=True,
        use_attribute_docstrings=True,
    )


class ObjectMeta(Strict):
    """Standard object metadata: the name the user chose and what the store keeps about it."""

    name: DnsLabel
    """Unique name within the kind: a DNS-1123 label (lowercase letters, digits, '-', at most 63)."""
    uid: str | None = None
    """Unique id the store assigns on creation. Set by the system; read-only."""
    generation: int | None = None
    """Sequence number of the spec; incremented on every spec change. Set by the system."""
    resource_version: int | None = None
    """Version of the stored object (the ZooKeeper znode version) used for compare-and-set."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Key/value pairs to select and group objects (e.g. `apply --prune -l app=pi`)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Free-form key/value notes for tools and people; not used for selection."""
    finalizers: list[str] = Field(default_factory=list)
    """Cleanups that must finish before the object is removed (set by the operator)."""
    creation_timestamp: datetime | None = None
    """When the object was first stored (UTC). Set by the system."""
    deletion_timestamp: datetime | None = None
    """When deletion was requested (UTC); the object stays until its finalizers are done."""


class Condition(Strict):
    """One observed aspect of an object's state, in the Kubernetes condition style."""

    type: str
    """What the condition is about, e.g. Ready, Registered, Funded."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds: True, False or Unknown."""
    reason: str = ""
    """A CamelCase machine-readable reason for the last transition."""
    message: str = ""
    """A human-readable explanation of the last transition."""
    last_transition_time: datetime | None = None
    """When the status last changed (UTC)."""


class Status(Strict):
    """Common status; each kind extends it."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """The latest observations of the object's state."""

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Resource(Strict):
    """A stored object. Subclasses set KIND/PLURAL/SHORT and narrow `spec` and `status`."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT: ClassVar[tuple[str, ...]] = ()

    api_version: Literal["cluster.boid.com/v1alpha1"] = API_VERSION
    """Versioned schema of this object: always cluster.boid.com/v1alpha1."""
    kind: str
    """The kind of object, e.g. Protocol or Job."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: Any
    """The desired state, written by the user."""
    status: Status | None = None
    """The observed state, written by the operator; ignored on apply."""

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self, *, with_status: bool = True) -> dict[str, Any]:
        """The wire form (camelCase, no nulls), as `-o yaml|json` shows it."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not with_status:
            data.pop("status", None)
        return data
