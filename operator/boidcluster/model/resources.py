"""The four resource kinds: Protocol, Job, Contributor, GitSource.

Specs are what users write, so every field is typed, described (the descriptions feed the CRDs and
`boidctl explain`) and validated with messages that say what to write instead. Cross-field rules
(one work-unit source, quorum <= replicas, pay rates in the fund's token) live on the models, and
report the exact field through `field_error` so the loader can point at the offending line.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    WithJsonSchema,
    model_validator,
)

from pydantic import Strict as PydanticStrict

from .meta import Condition, Resource, Status, Strict, field_error
from .meta import DnsLabel
from .types import Asset, Duration, EosName

MAX_UNITS = 1_000_000
"""A Job expands to at most this many work units (count, sweep points or input groups)."""

TOP_CONTRIBUTORS = 10
"""Job status lists the contributed seconds of at most this many contributors."""

RESERVED_ENV = ("BOID_UNIT_INDEX", "BOID_UNIT_PARAMS", "BOID_OUTPUT_DIR", "BOID_INPUT_FILES")
"""Variables the dispatcher sets for every unit; a Job's env may not override them."""

# --- small checked types -----------------------------------------------------------------------

# Spec numbers and booleans are strict: YAML `retries: "3"` or `cpus: true` is a mistake to report,
# not to coerce. (Status fields stay lax: only the operator writes them.)
Number = StrictInt | StrictFloat


def _storage_path(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty: give a path in storage, e.g. 'protocols/monte-carlo'")
    if "\0" in value or ".." in value.replace("\\", "/").split("/"):
        raise ValueError(f"{value!r} must not contain '..' or NUL: paths stay inside storage")
    return value


StoragePath = Annotated[str, AfterValidator(_storage_path)]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(
            f"{value!r} is not an environment variable name: use letters, digits and '_', "
            "not starting with a digit"
        )
    if value in RESERVED_ENV:
        raise ValueError(f"{value} is set by the dispatcher for every unit; choose another name")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def _command(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be an empty list")
        bad = [i for i, part in enumerate(value) if not isinstance(part, str)]
        if bad:
            raise ValueError(
                f"item {bad[0]} is {type(value[bad[0]]).__name__} {value[bad[0]]!r}; every "
                "argument must be a string (quote numbers and yes/no/on/off in YAML)"
            )
        return value
    raise ValueError(
        f"must be a string (run by /bin/sh -c) or a list of strings (run directly), "
        f"not {type(value).__name__}"
    )


Command = Annotated[str | list[str], BeforeValidator(_command)]


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(
        f"a sweep value must be a string, number or boolean, not {type(value).__name__}"
    )


Scalar = Annotated[str | int | float | bool, BeforeValidator(_scalar)]

_MIB = re.compile(r"^(\d+)\s*(Mi|Gi|Ti)?$")


def parse_mebibytes(value: Any) -> int:
    """MiB from an integer (MiB, as Marathon counts) or a string '512Mi', '2Gi', '1Ti'."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("cannot be negative")
        return value
    if isinstance(value, str):
        m = _MIB.match(value.strip())
        if m:
            return int(m.group(1)) * {None: 1, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[m.group(2)]
    raise ValueError(
        f"{value!r} is not a size: write MiB as an integer (512) or a string like '512Mi' or '2Gi'"
    )


MiB = Annotated[
    int,
    BeforeValidator(parse_mebibytes),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+\s*(Mi|Gi|Ti)?$"},
            ],
            "x-kubernetes-int-or-string": True,
            "examples": [512, "512Mi", "2Gi"],
        }
    ),
]

# --- Protocol ----------------------------------------------------------------------------------

_CHAIN_NAME = re.compile(r"^[a-z1-5.]{0,11}[a-z1-5]$")


def chain_name_for(name: str) -> str:
    """metadata.name -> the protocol's default name on chain (see ProtocolSpec.chain_name)."""
    candidate = name.replace("-", ".")
    if _CHAIN_NAME.match(candidate) and ".." not in candidate:
        return candidate
    import hashlib

    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    alphabet = "abcdefghijklmnopqrstuvwxyz12345"
    return "p" + "".join(alphabet[(digest >> (5 * i)) % 31] for i in range(11))


class Fund(Strict):
    """The protocol's token and budget. The money itself is an escrow on the registry contract:
    users deposit into it with `boidctl fund` (signed with their own key) and contributors are paid
    from it; the operator holds no key of any fund, owner or researcher account."""

    account: EosName | None = None
    """Account `boidctl fund` deposits from (default: the owner). Payouts never come from it."""
    quantity: Asset
    """Budget pledged to the protocol, e.g. '1000.0000 BOID'. Its symbol and precision fix the
    token for every other amount in the protocol (fixed on chain when the protocol is registered)."""
    token_contract: EosName = "eosio.token"
    """Account of the eosio.token-standard contract that issues the token (fixed on chain when
    the protocol is registered)."""


class PayRates(Strict):
    """What one hour of contributed time pays, in the fund's token."""

    worker: Asset
    """Pay per hour of a worker's unit time, e.g. '1.0000 BOID'."""
    dispatcher: Asset
    """Pay per hour of running this protocol's dispatcher, e.g. '0.5000 BOID'. The dispatcher's
    time is the time it was busy: the union of the running intervals of the jobs it ran, each
    instant divided among the jobs (of any protocol) running then, so a protocol pays its share
    and concurrent jobs never add up to more than the wall time; credited once per succeeded job."""


class Payout(Strict):
    """When unpaid contributed time is settled on chain."""

    interval: Annotated[Duration, Field(ge=60)] = Field(default="24h", validate_default=True)
    """How often payouts run, e.g. '24h' (at least 1m)."""
    minimum: Asset | None = None
    """Smallest amount worth a transfer; smaller balances wait for the next payout. Defaults to
    nothing (every positive balance is paid)."""


class Quota(Strict):
    """Limits on how much of the cluster this protocol's jobs may use at once."""

    max_parallelism: StrictInt = Field(ge=1)
    """Most work units of this protocol running at the same time, across all its jobs."""


SubmitterName = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})$")]
"""A cluster user name (a ZooKeeper digest user), or '*' for any registered user."""


class ProtocolSpec(Strict):
    """A research protocol: who sponsors it, who runs it, where its data lives, how it pays."""

    title: str = Field(min_length=1, max_length=256)
    """Human-readable title of the research."""
    owner: EosName
    """EOS account of the sponsoring team that owns the protocol on chain."""
    researcher: EosName
    """EOS account of the researcher who runs the protocol's jobs."""
    datadir: StoragePath
    """Directory in storage for the protocol's bootstrap data and job results."""
    fund: Fund
    """The fund that pays contributors."""
    pay_rates: PayRates
    """Pay per hour of contributed time, in the fund's token."""
    payout: Payout = Field(default_factory=lambda: Payout())
    """When and how contributors are paid."""
    quota: Quota | None = None
    """Optional limits on cluster usage."""
    chain_name: EosName | None = None
    """The protocol's name on chain, unique per owner (the registry keys protocols by owner and
    name). Defaults to metadata.name with '-' as '.' when that is a valid account-style name of at
    most 12 characters, else 'p' + 11 characters of a hash of metadata.name."""

    submitters: list[SubmitterName] | None = None
    """Users (cluster identities, as in $BOID_HOME/config) who may submit Jobs under this protocol,
    besides the protocol's own creator and the cluster admins; '*' means any registered user.
    Absent: only the creator and the admins. Checked only on a cluster that checks identities."""

    def allows_submitter(self, user: str, protocol_owner: str | None) -> bool:
        """May `user` (a proven identity) submit Jobs here? (Admins are the caller's business.)"""
        return user == protocol_owner or bool(self.submitters) and (
            "*" in self.submitters or user in self.submitters)

    network: StrictBool = False
    """Whether this protocol's work units may reach the network. By default a unit's container has
    no network at all (not even loopback to the host), so it cannot reach ZooKeeper, the chain or
    anything else."""

    @model_validator(mode="after")
    def _one_token(self) -> "ProtocolSpec":
        fund = self.fund.quantity
        if fund.amount <= 0:
            raise field_error("fund.quantity", f"must be positive (got '{fund}')")
        checks = [("payRates.worker", self.pay_rates.worker),
                  ("payRates.dispatcher", self.pay_rates.dispatcher)]
        if self.payout.minimum is not None:
            checks.append(("payout.minimum", self.payout.minimum))
        for path, asset in checks:
            if asset.symbol != fund.symbol:
                raise field_error(
                    path,
                    f"'{asset}' is not in the fund's token: fund.quantity is '{fund}' "
                    f"(symbol {fund.symbol.code}, {fund.symbol.precision} decimals)",
                    f"use {fund.symbol.precision} decimals and {fund.symbol.code}, e.g. "
                    f"'{Asset(10 ** fund.symbol.precision, fund.symbol)}'",
                )
            if asset.amount < 0:
                raise field_error(path, f"cannot be negative (got '{asset}')")
        return self


class ProtocolStatus(Status):
    """Observed state of a Protocol. Conditions: Registered, StorageReady, Funded, Ready."""

    fund_balance: Asset | None = None
    """Escrow the registry holds for the protocol (its `balance` on chain), as last read."""
    escrow: Asset | None = None
    """Escrow nobody is owed yet (balance - owed; negative: a shortfall), as last read."""
    owed: Asset | None = None
    """Recorded work not yet paid, fixed at the rates in force when it was recorded."""
    reserved: Asset | None = None
    """Escrow kept from withdrawal for what running jobs can still owe (set by the operator on chain)."""
    paid_total: Asset | None = None
    """Everything the registry has paid contributors of this protocol."""
    deposited: Asset | None = None
    """Everything ever deposited into the protocol's escrow."""
    withdrawn: Asset | None = None
    """Everything the owner took back from the escrow."""
    dispatcher: str | None = None
    """Where this protocol's dispatcher runs: a Marathon app id or 'local'."""
    registered_at: datetime | None = None
    """When the protocol was last written to the on-chain registry."""
    last_payout_time: datetime | None = None
    """When contributors were last paid (payouts run at most once per spec.payout.interval)."""
    paid: dict[str, Asset] = Field(default_factory=dict)
    """Tokens paid per contributor account, read from the registry's rows (the chain is the record)."""


class Protocol(Resource):
    """A research protocol: registered on chain, funded, with a dispatcher for its jobs."""

    KIND: ClassVar[str] = "Protocol"
    PLURAL: ClassVar[str] = "protocols"
    SHORT: ClassVar[tuple[str, ...]] = ("proto",)
    CONDITIONS: ClassVar[tuple[str, ...]] = ("Registered", "StorageReady", "Funded", "Ready")

    kind: Literal["Protocol"] = "Protocol"
    """Always Protocol."""
    spec: ProtocolSpec
    """What the protocol is and how it pays."""
    status: ProtocolStatus | None = None
    """Observed state, written by the operator."""

    @property
    def chain_name(self) -> str:
        """The protocol's name on chain (with spec.owner, its identity in the registry)."""
        return self.spec.chain_name or chain_name_for(self.name)


# --- Job ---------------------------------------------------------------------------------------


class RangeSpec(Strict):
    """Evenly spaced numbers from start up to, not including, stop (like Python's range)."""

    start: Number = 0
    """First value."""
    stop: Number
    """End of the range (excluded)."""
    step: Number = 1
    """Distance between values; negative counts down. Must not be 0."""

    @model_validator(mode="after")
    def _finite(self) -> "RangeSpec":
        if self.step == 0:
            raise field_error("step", "must not be 0", "use a positive step to count up")
        n = self.count()
        if n == 0:
            raise field_error(
                "stop", f"the range from {self.start} to {self.stop} by {self.step} is empty",
                "stop is excluded; with a positive step stop must be greater than start",
            )
        if n > MAX_UNITS:
            raise field_error("step", f"the range has {n} values, more than {MAX_UNITS}")
        return self

    def count(self) -> int:
        return max(0, math.ceil((self.stop - self.start) / self.step))

    def values(self) -> list[int | float]:
        vals = [self.start + i * self.step for i in range(self.count())]
        if all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            return vals
        return [round(v, 12) for v in vals]


class SweepRange(Strict):
    """A sweep parameter's values given as a range."""

    range: RangeSpec
    """start, stop (excluded) and step."""


def _sweep_branch(value: Any) -> str | None:
    if isinstance(value, list):
        return "list-of-values"
    if isinstance(value, dict):
        return "range-object"
    if isinstance(value, SweepRange):
        return "range-object"
    return None


SweepValues = Annotated[
    Annotated[list[Scalar], Tag("list-of-values"), Field(min_length=1)]
    | Annotated[SweepRange, Tag("range-object")],
    Discriminator(
        _sweep_branch,
        custom_error_type="sweep_values",
        custom_error_message="must be a list of values or a mapping {range: {start, stop, step}}",
    ),
]


class InputsSpec(Strict):
    """Work units made from the files found under a storage directory."""

    path: StoragePath
    """Directory in storage to list (relative paths are under the protocol's datadir)."""
    pattern: str = "*"
    """Glob that file names must match, e.g. '*.csv'."""
    per_unit: StrictInt = Field(default=1, ge=1)
    """How many files go into one work unit (the last unit may get fewer)."""


class WorkUnits(Strict):
    """How the job splits into units. Set exactly one of count, sweep or inputs."""

    count: StrictInt | None = Field(default=None, ge=1, le=MAX_UNITS)
    """Run this many units, indexed 0..count-1 (BOID_UNIT_INDEX), like an Indexed Job."""
    sweep: dict[str, SweepValues] | None = None
    """One unit per combination of parameter values (the cartesian product); each unit gets its
    combination as the JSON object BOID_UNIT_PARAMS. A parameter is a list of values or
    {range: {start, stop, step}}."""
    inputs: InputsSpec | None = None
    """One unit per group of input files in storage (BOID_INPUT_FILES)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "WorkUnits":
        given = [k for k in ("count", "sweep", "inputs") if getattr(self, k) is not None]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise field_error(
                "", f"set exactly one of count, sweep or inputs (got {got})",
                "count: N runs N indexed units; sweep: {param: [values]} runs one unit per "
                "combination; inputs: {path, pattern, perUnit} runs one unit per file group",
            )
        if self.sweep is not None:
            if not self.sweep:
                raise field_error("sweep", "must name at least one parameter",
                                  "e.g. sweep: {seed: [1, 2, 3]}")
            total = 1
            for param, values in self.sweep.items():
                total *= values.range.count() if isinstance(values, SweepRange) else len(values)
            if total > MAX_UNITS:
                raise field_error("sweep", f"makes {total} units, more than {MAX_UNITS}")
        return self

    def sweep_points(self) -> list[dict[str, Any]]:
        """Every combination of the sweep's values, in a stable order (the unit index order)."""
        if self.sweep is None:
            return []
        names = list(self.sweep)
        axes = [v.range.values() if isinstance(v, SweepRange) else list(v)
                for v in self.sweep.values()]
        return [dict(zip(names, combo)) for combo in itertools.product(*axes)]

    def static_total(self) -> int | None:
        """Number of units when known without listing storage (None for inputs)."""
        if self.count is not None:
            return self.count
        if self.sweep is not None:
            return len(self.sweep_points())
        return None


class ResourceRequest(Strict):
    """What one unit needs from a worker (Marathon/Mesos resource names and units)."""

    cpus: Annotated[float, PydanticStrict()] = Field(default=1.0, gt=0)
    """CPU shares, e.g. 0.5 or 2."""
    mem: MiB = 128
    """Memory in MiB: an integer (512) or a string ('512Mi', '2Gi')."""
    disk: MiB = 0
    """Scratch disk in MiB: an integer or a string ('1Gi')."""
    gpus: StrictInt = Field(default=0, ge=0)
    """Whole GPUs."""


class Replication(Strict):
    """BOINC-style redundancy: run each unit several times on distinct contributors."""

    replicas: StrictInt = Field(default=1, ge=1, le=10)
    """How many contributors run each unit."""
    quorum: StrictInt | None = Field(default=None, ge=1)
    """How many identical results from distinct contributors make a unit's result valid.
    Defaults to replicas (all must agree); 1 <= quorum <= replicas."""

    @model_validator(mode="before")
    @classmethod
    def _quorum_defaults_to_replicas(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("quorum") is None:
            replicas = data.get("replicas", 1)
            if isinstance(replicas, int) and not isinstance(replicas, bool):
                data = {**data, "quorum": replicas}  # else the replicas error is the one to show
        return data

    @model_validator(mode="after")
    def _quorum_fits(self) -> "Replication":
        if self.quorum is not None and self.quorum > self.replicas:
            raise field_error(
                "quorum", f"must be <= replicas (got quorum {self.quorum}, replicas {self.replicas})",
                "a result can only be confirmed by as many contributors as run the unit",
            )
        return self


class Output(Strict):
    """Where and how unit results are amalgamated."""

    path: StoragePath | None = None
    """Directory in storage for the results; relative paths are under the protocol's datadir.
    Defaults to jobs/<job name> under the datadir."""
    reduce: Literal["concat", "jsonl", "none", "command"] = "concat"
    """How unit outputs are gathered: concat (files joined in unit order), jsonl (every unit's
    *.jsonl lines joined into results.jsonl, each line checked as JSON), none (unit directories
    kept as they are), command (run output.command over the unit directories)."""
    command: Command | None = None
    """Reducer run when reduce is 'command'; it sees the unit directories as arguments (or, with
    unitDirs: file, in the file named by $BOID_UNIT_DIRS)."""
    unit_dirs: Literal["arguments", "file"] = "arguments"
    """How the reducer gets the accepted unit directories, in unit order: as arguments (a job whose
    directories do not fit in one command line, ~2 MB on Linux, fails before any unit runs), or
    only in the file named by $BOID_UNIT_DIRS, one per line (any number of units). The file is
    given in both cases."""

    @model_validator(mode="after")
    def _command_iff_reduce_command(self) -> "Output":
        if self.reduce == "command" and self.command is None:
            raise field_error("command", "is required when reduce is 'command'",
                              "give the reducer to run, e.g. command: [python3, merge.py]")
        if self.reduce != "command" and self.command is not None:
            raise field_error("command", f"is only used when reduce is 'command' (reduce is "
                              f"'{self.reduce}')", "remove it, or set reduce: command")
        if self.reduce != "command" and self.unit_dirs != "arguments":
            raise field_error("unitDirs", f"is only used when reduce is 'command' (reduce is "
                              f"'{self.reduce}')", "remove it, or set reduce: command")
        return self


CONSTRAINT_OPERATORS = ("UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER", "IS")


def _constraint(value: list[str]) -> list[str]:
    field, op, *rest = value
    if op not in CONSTRAINT_OPERATORS:
        raise ValueError(
            f"unknown constraint operator {op!r}: use one of {', '.join(CONSTRAINT_OPERATORS)}"
        )
    if op == "UNIQUE" and rest:
        raise ValueError("UNIQUE takes no value: write [field, UNIQUE]")
    if op in ("LIKE", "UNLIKE", "MAX_PER", "IS") and not rest:
        raise ValueError(f"{op} needs a value: write [field, {op}, value]")
    if op == "MAX_PER" and not rest[0].isdigit():
        raise ValueError(f"MAX_PER needs a whole number, not {rest[0]!r}")
    if op in ("LIKE", "UNLIKE"):
        try:
            re.compile(rest[0])
        except re.error as exc:
            raise ValueError(f"{rest[0]!r} is not a regular expression: {exc}") from None
    return value


Constraint = Annotated[list[str], Field(min_length=2, max_length=3), AfterValidator(_constraint)]


class JobSpec(Strict):
    """An embarrassingly parallel program: an image and a command, split into work units."""

    protocol: DnsLabel
    """Name of the Protocol this job runs under (and is paid from)."""
    image: str = Field(min_length=1)
    """Container image of the unit's program, e.g. 'python:3.11-slim' (the local backend runs
    the command on the host instead)."""
    command: Command
    """Program each unit runs: a list of arguments (run directly) or a string (run by
    /bin/sh -c). It sees BOID_UNIT_INDEX, BOID_UNIT_PARAMS (JSON), BOID_OUTPUT_DIR and
    BOID_INPUT_FILES."""
    env: dict[EnvName, str] = Field(default_factory=dict)
    """Extra environment variables for every unit (values are strings)."""
    work_units: WorkUnits
    """How the job splits into units: exactly one of count, sweep or inputs."""
    parallelism: StrictInt | None = Field(default=None, ge=1)
    """Most units running at the same time. Defaults to no limit of its own: as many as there are
    workers, within the protocol's quota."""
    resources: ResourceRequest = Field(default_factory=lambda: ResourceRequest())
    """What one unit needs from a worker."""
    retries: StrictInt = Field(default=3, ge=0, le=100)
    """How many times a failed unit is retried before the job fails. A unit whose worker
    vanished is re-queued without counting as a retry."""
    unit_timeout: Annotated[Duration, Field(ge=1)] | None = None
    """Longest one unit attempt may run, e.g. '10m'; a unit running longer is killed and retried.
    Defaults to no limit."""
    deadline: Annotated[Duration, Field(ge=1)] | None = None
    """Longest the whole job may run from its start, e.g. '24h'; after it the job fails.
    Defaults to no limit."""
    replication: Replication = Field(default_factory=lambda: Replication())
    """Run each unit on several contributors and accept a result only on agreement."""
    output: Output = Field(default_factory=lambda: Output())
    """Where and how results are gathered."""
    constraints: list[Constraint] = Field(default_factory=list)
    """Placement rules in Marathon style: [[field, operator, value?]], e.g. [hostname, UNIQUE] or
    [boid_account, LIKE, 'alice|bob']. Operators: UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE,
    MAX_PER, IS."""
    ttl_seconds_after_finished: StrictInt | None = Field(default=None, ge=0)
    """Seconds after the job succeeded or failed before the operator deletes it (as Kubernetes'
    Job field of the same name); its compacted summary leaves ZooKeeper with it. Defaults to
    keeping the finished job until it is deleted."""


class UnitCounts(Strict):
    """How many units are in each state."""

    total: int = 0
    """All units of the job (0 until inputs are listed)."""
    pending: int = 0
    """Waiting for a worker."""
    running: int = 0
    """Running on a worker now."""
    succeeded: int = 0
    """Finished successfully (at least one replica)."""
    failed: int = 0
    """Failed after all retries."""
    validated: int = 0
    """Accepted: quorum results from distinct contributors agreed."""


class ContributedTime(Strict):
    """Seconds of unit time one contributor gave to this job."""

    account: EosName
    """The contributor's EOS account."""
    seconds: int = Field(ge=0)
    """Contributed unit time in seconds."""
    microseconds: int = Field(default=0, ge=0)
    """The same time in microseconds, as recorded on chain."""


class UnitTime(Strict):
    """How long one accepted unit took (its longest credited replica)."""

    unit: str
    """The unit's id."""
    contributor: str
    """The contributor whose replica took longest."""
    microseconds: int = Field(ge=0)
    """Unit time in microseconds."""


class Disagreement(Strict):
    """A replica result that lost the vote: kept aside, not credited."""

    unit: str
    """The unit's id."""
    contributor: str
    """The contributor whose result disagreed."""
    hash: str
    """sha256 of the disagreeing result."""
    task: str
    """The task id of that replica."""


class JobStatus(Status):
    """Observed state of a Job."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    """Where the job is in its life: Pending, Running, Succeeded or Failed."""
    units: UnitCounts = Field(default_factory=lambda: UnitCounts())
    """Unit counts by state."""
    start_time: datetime | None = None
    """When the first unit was launched (UTC)."""
    completion_time: datetime | None = None
    """When the job succeeded or failed (UTC)."""
    output: str | None = None
    """Storage location of the amalgamated results."""
    contributors: list[ContributedTime] = Field(default_factory=list)
    """The top contributors by contributed seconds (at most 10): each accepted unit's run time,
    recorded per contributor (condition Recorded=False, reason ContributorNotRegistered, names an
    account whose time waits for its registration). The dispatcher is credited, once the job
    succeeds, its share of the job's running interval: each instant divided among the jobs
    running then (busy intervals merged across jobs), never more than the wall time."""
    progress: str | None = None
    """Validated units out of all, e.g. '6/8 (75%)'."""
    slowest_units: list[UnitTime] = Field(default_factory=list)
    """The accepted units that took longest (at most 5)."""
    disagreements: list[Disagreement] = Field(default_factory=list)
    """Replica results outvoted by the quorum (at most 20 listed)."""
    failed_units: list[str] = Field(default_factory=list)
    """Units that failed after all retries, or were left unfinished at the deadline (at most 20)."""
    image_digest: str | None = None
    """The digest `spec.image` resolved to when the job started; every unit and replica runs it."""


class Job(Resource):
    """An embarrassingly parallel computation split into work units run by contributors."""

    KIND: ClassVar[str] = "Job"
    PLURAL: ClassVar[str] = "jobs"
    SHORT: ClassVar[tuple[str, ...]] = ()

    kind: Literal["Job"] = "Job"
    """Always Job."""
    spec: JobSpec
    """What to run and how to split it."""
    status: JobStatus | None = None
    """Observed state, written by the operator."""


# --- Contributor -------------------------------------------------------------------------------


class ContributorSpec(Strict):
    """A volunteer's account and the researchers it lends its machine or dispatcher to."""

    account: EosName
    """The contributor's EOS account (paid from the protocols' funds). Its Mesos agents
    authenticate as this principal and statically reserve their resources for the role
    boid-contributors/<account> (`boidctl mesos agent-credentials`); local slots name it with
    `operator run --slot`."""
    role: Literal["worker", "dispatcher"] = "worker"
    """worker runs work units (credited each accepted unit's run time); dispatcher runs protocols'
    dispatchers (credited the time it was busy: the union of its running jobs' intervals, each
    instant shared pro rata among the jobs, so never more than the wall time). Time of an account
    not registered on chain is held back, not lost, and recorded once it is registered."""
    researchers: list[EosName] = Field(min_length=1)
    """EOS accounts of the researchers this contributor works for."""

    @model_validator(mode="after")
    def _unique(self) -> "ContributorSpec":
        seen: set[str] = set()
        for i, r in enumerate(self.researchers):
            if r in seen:
                raise field_error(f"researchers[{i}]", f"{r!r} is listed twice")
            seen.add(r)
        return self


class ContributorStatus(Status):
    """Observed state of a Contributor, read from the clusterjobs contract."""

    registrations: list[str] = Field(default_factory=list)
    """Protocols (owner/name on chain) this contributor is registered with."""
    total_time: int = 0
    """All contributed time, in seconds."""
    unpaid_time: int = 0
    """Contributed time not paid out yet, in seconds."""


class Contributor(Resource):
    """A volunteer who lends a machine (worker) or runs dispatchers, and is paid for the time."""

    KIND: ClassVar[str] = "Contributor"
    PLURAL: ClassVar[str] = "contributors"
    SHORT: ClassVar[tuple[str, ...]] = ("contrib",)

    kind: Literal["Contributor"] = "Contributor"
    """Always Contributor."""
    spec: ContributorSpec
    """Who contributes, in which role, for whom."""
    status: ContributorStatus | None = None
    """Observed state, written by the operator."""


# --- GitSource ---------------------------------------------------------------------------------


class GitSourceSpec(Strict):
    """A git repository whose specs the operator keeps applied (GitOps)."""

    repo: str = Field(min_length=1)
    """Repository URL or local path, e.g. 'https://github.com/boid/specs.git'."""
    ref: str = Field(default="main", min_length=1)
    """Branch, tag or commit to follow."""
    path: str = "."
    """Directory inside the repository holding the YAML specs (searched recursively)."""
    interval: Annotated[Duration, Field(ge=10)] = Field(default="3m", validate_default=True)
    """How often to fetch and compare, e.g. '3m' (at least 10s)."""
    prune: StrictBool = False
    """Delete objects this source created that are no longer in the repository."""
    prune_limit: StrictInt = Field(default=10, ge=0)
    """Refuse to prune more than this many objects in one sync (a safety net against an
    emptied repository); 0 means no limit."""
    self_heal: StrictBool = False
    """Revert changes made to synced objects outside git; otherwise they are reported as drift."""


class DriftEntry(Strict):
    """One object whose live state differs from the repository."""

    kind: str
    """Kind of the object."""
    name: str
    """Name of the object."""
    reason: str
    """What differs: Modified, Missing or Extra, with details."""


class GitSourceStatus(Status):
    """Observed state of a GitSource."""

    synced_commit: str | None = None
    """Commit last applied."""
    last_sync_time: datetime | None = None
    """When the last sync finished (UTC)."""
    drift: list[DriftEntry] = Field(default_factory=list)
    """Objects whose live state differs from the repository."""


class GitSource(Resource):
    """A git repository of specs the operator applies and keeps in sync."""

    KIND: ClassVar[str] = "GitSource"
    PLURAL: ClassVar[str] = "gitsources"
    SHORT: ClassVar[tuple[str, ...]] = ("gs",)

    kind: Literal["GitSource"] = "GitSource"
    """Always GitSource."""
    spec: GitSourceSpec
    """Which repository, which ref and how to sync."""
    status: GitSourceStatus | None = None
    """Observed state, written by the operator."""


__all__ = [
    "Protocol", "ProtocolSpec", "ProtocolStatus", "Fund", "PayRates", "Payout", "Quota",
    "Job", "JobSpec", "JobStatus", "WorkUnits", "RangeSpec", "SweepRange", "InputsSpec",
    "ResourceRequest", "Replication", "Output", "UnitCounts", "ContributedTime", "UnitTime",
    "Disagreement",
    "Contributor", "ContributorSpec", "ContributorStatus",
    "GitSource", "GitSourceSpec", "GitSourceStatus", "DriftEntry",
    "Condition", "MAX_UNITS", "TOP_CONTRIBUTORS", "RESERVED_ENV", "CONSTRAINT_OPERATORS",
    "parse_mebibytes",
]
