"""The interface every execution backend implements (`local` subprocesses, `mesos` framework).

The dispatcher submits tasks and consumes a stream of status updates; it never knows whether a
task runs as a subprocess here or on a volunteer's Mesos agent. Submission is asynchronous on
purpose: Mesos launches only when a matching offer arrives, the local backend only when a slot
is free, so `submit` queues and the updates say what happened. A task's outputs are written
under `output_dir` in storage; the dispatcher hashes and amalgamates them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

TaskState = Literal["STAGING", "RUNNING", "FINISHED", "FAILED", "KILLED", "LOST"]
TERMINAL: frozenset[str] = frozenset({"FINISHED", "FAILED", "KILLED", "LOST"})
# LOST reasons that blame the machine or the network, not the task (mesos.proto TaskStatus.Reason).
MACHINE_LOSS_REASONS: frozenset[str] = frozenset({
    "REASON_AGENT_REMOVED", "REASON_AGENT_DISCONNECTED", "REASON_AGENT_REMOVED_BY_OPERATOR",
    "REASON_AGENT_RESTARTED", "REASON_AGENT_UNKNOWN", "REASON_AGENT_DRAINING", "REASON_INVALID_OFFERS",
    "REASON_RECONCILIATION", "REASON_MASTER_DISCONNECTED", "REASON_FRAMEWORK_REMOVED",
})


@dataclass(frozen=True)
class TaskResources:
    cpus: float = 1.0
    mem: int = 128      # MiB
    disk: int = 0       # MiB
    gpus: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """One attempt of one replica of one work unit."""

    task_id: str                     # unique per attempt, e.g. "<job>.<unit>.r<replica>.a<attempt>"
    job: str
    unit: str                        # the unit's stable id within the job
    command: list[str]
    env: dict[str, str]              # includes BOID_UNIT_INDEX, BOID_UNIT_PARAMS, BOID_OUTPUT_DIR, BOID_INPUT_FILES
    output_dir: str                  # storage path the task writes its outputs into
    image: str | None = None         # container image, resolved to a digest once per job when the backend can
    network: bool = False            # the unit may reach the network (its Protocol allows it); else none
    resources: TaskResources = field(default_factory=TaskResources)
    constraints: tuple[tuple[str, ...], ...] = ()   # Marathon style [field, operator, value?]
    exclude_contributors: frozenset[str] = frozenset()  # replicas of a unit run on distinct contributors
    timeout: float | None = None     # seconds; the backend kills the task after it
    role: str | None = None          # Mesos role (one per protocol); ignored locally


class ImageUnavailable(Exception):
    """A job's image is neither on the machine nor pullable; the message says how to provide it."""


@dataclass(frozen=True)
class TaskUpdate:
    task_id: str
    state: TaskState
    contributor: str | None = None   # EOS account credited for the work (slot identity / agent attribute)
    exit_code: int | None = None
    message: str = ""
    started_at: float | None = None  # wall-clock seconds when it started running
    finished_at: float | None = None
    # Why it ended, as a stable name (Mesos: TaskStatus.Reason, e.g. REASON_EXECUTOR_TERMINATED);
    # "" when the backend has none. With `message` it tells one cause from another: a task LOST
    # again and again with the same (reason, message) will not run anywhere (see `cause`).
    reason: str = ""

    @property
    def cause(self) -> tuple[str, str] | None:
        """(reason, message) of a LOST update that says something about the task itself, None
        when the machine was lost under it (re-running elsewhere is the right answer then)."""
        if self.state != "LOST" or not self.reason or self.reason in MACHINE_LOSS_REASONS:
            return None
        return (self.reason, self.message)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def contributed_us(self) -> int:
        """Contributed time in integer microseconds (what the chain records)."""
        if self.started_at is None or self.finished_at is None:
            return 0
        return max(0, int(round((self.finished_at - self.started_at) * 1_000_000)))


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, task: TaskSpec) -> None:
        """Queue a task; it starts when capacity that fits (resources, constraints, exclusions) is free."""

    def updates(self, timeout: float = 0.0) -> list[TaskUpdate]:
        """Status updates since the last call (waits up to `timeout` for the first one)."""

    def kill(self, task_id: str) -> None:
        """Kill a queued or running task (idempotent); a KILLED update follows."""

    def reconcile(self, task_ids: list[str]) -> None:
        """After a dispatcher restart: report (as updates) the current state of tasks we believe are
        live; unknown ones come back LOST, so the dispatcher re-queues them."""

    def contributors(self) -> list[str]:
        """The contributor identities that can currently run work (for status and fairness)."""

    def close(self) -> None:
        """Stop: queued tasks are dropped. Running ones are killed where they cannot outlive this
        process (local); a cluster backend leaves them running for its successor to reconcile
        (a failover), and kills them only on an explicit teardown (`close(remove=True)`)."""
