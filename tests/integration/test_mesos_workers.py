"""Authenticated workers on the `mesos` backend (issue 14): a contributor's agents prove who they
are, and work is credited to the account whose role the agent's resources are statically
reserved for -- never to the free `boid_account` attribute.

The Mesos master TEST DOUBLE (tests/doubles/mesos_master.py) is configured the way
`boidctl mesos agent-credentials` configures a real master: --authenticate_agents, the agent
principals' credentials and the generated --acls, evaluated by the double as Mesos' local
authorizer does. Every test ends by asserting the double recorded no validation or event errors.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boidcluster.adapters.backend import TaskResources, TaskSpec, TaskUpdate
from boidcluster.engine.metrics import Metrics
from boidcluster.adapters.mesos import (MesosBackend, agent_acls, agent_credentials, contributor_role,
                                        credit_offer, Offer)
from fixtures.mesos import backend_factory, strict_master
from doubles.mesos_master import AgentRegistrationRefused, MesosCluster, MesosMasterDouble

ROLE = "proto-a"
CONTRIBUTORS = ("alice", "bob")


def secrets_of(creds: dict) -> dict[str, str]:
    return {c["principal"]: c["secret"] for c in creds["credentials"]}


def secure(cluster: MesosCluster, accounts=CONTRIBUTORS) -> dict[str, str]:
    """Configure the master as the generator says; the agent principals' secrets."""
    creds = agent_credentials(accounts)
    cluster.configure_agent_auth(secrets_of(creds), agent_acls(accounts))
    return secrets_of(creds)


def honest_agent(cluster: MesosCluster, secrets: dict[str, str], account: str, **kw):
    return cluster.add_agent(account, principal=account, secret=secrets[account],
                             reserve_for=contributor_role(account), **kw)


@pytest.fixture
def master() -> Iterator[MesosMasterDouble]:
    with strict_master(task_seconds=None) as m:
        yield m


@pytest.fixture
def backends() -> Iterator[Callable[..., MesosBackend]]:
    with backend_factory(ROLE, refuse_seconds=0.1) as make:
        yield make


def spec(task_id: str, *, unit: str = "u0", job: str = "job1") -> TaskSpec:
    return TaskSpec(task_id=task_id, job=job, unit=unit, command=["sh", "-c", "echo hi"], role=ROLE,
                    resources=TaskResources(cpus=1, mem=64), env={}, output_dir=f"/out/{task_id}")


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Updates:
    def __init__(self, b: MesosBackend) -> None:
        self.b, self.seen = b, []  # type: ignore[var-annotated]

    def wait_state(self, task_id: str, state: str, timeout: float = 10.0) -> TaskUpdate:
        deadline = time.monotonic() + timeout
        while True:
            hit = [u for u in self.seen if u.task_id == task_id and u.state == state]
            if hit:
                return hit[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{task_id} never {state}; updates: {self.seen}")
            self.seen += self.b.updates(timeout=0.1)


def task_agents(cluster: MesosCluster) -> dict[str, str]:
    with cluster.lock:
        return {t.id: t.agent_id for t in cluster.tasks.values()}


# -- the attack: an agent claiming alice by its attribute ----------------------------------------

def test_attribute_mode_credits_whoever_claims_the_account(master, backends) -> None:
    """The attack as it works in the unauthenticated (attribute) mode, the only mode before issue
    14: mallory's agent says boid_account=alice and is credited as alice."""
    c = master.cluster
    forged = c.add_agent("alice", hostname="mallory.example")
    b = backends(master.url)   # no contributors=: the attribute mode
    assert b.health()["worker_identity"] == "attribute"
    ups = Updates(b)
    b.submit(spec("t1"))
    assert ups.wait_state("t1", "RUNNING").contributor == "alice"
    assert task_agents(c)["t1"] == forged.id


def test_forged_boid_account_agent_is_refused_credit(master, backends, caplog) -> None:
    """The same forged agent against a backend of authenticated workers: its offers (unreserved
    resources, offered to alice's role too, resources.cpp:1190-1200) are declined and reported
    once; the task waits for alice's real agent and is credited to alice only there."""
    c = master.cluster
    secrets = secure(c, ("alice", "bob", "mallory"))
    # mallory is a contributor too: her agent authenticates as herself and leaves its resources
    # unreserved (she may not reserve alice's role), claiming alice by the attribute
    forged = c.add_agent("alice", principal="mallory", secret=secrets["mallory"], hostname="mallory.example")
    b = backends(master.url, contributors=CONTRIBUTORS)
    assert b.health()["worker_identity"] == "reservation"
    ups = Updates(b)
    b.submit(spec("t1"))
    wait_for(lambda: forged.id in b.health()["uncredited_agents"], "the forged agent reported")
    assert "no resources statically reserved" in b.health()["uncredited_agents"][forged.id]
    metrics = Metrics()
    metrics.watch_backend(b.health)          # what an operator's /metrics shows
    assert "boid_backend_uncredited_agents 1.0" in metrics.exposition().decode()
    assert not c.calls_of("ACCEPT") and b.contributors() == []

    def forged_declined() -> set[str]:   # the roles the forged agent was offered to and declined
        with c.lock:
            offered = {o["value"] for call in c.calls_of("DECLINE") for o in call["decline"]["offer_ids"]}
            return {c.offers_log[o][1] for o in offered if c.offers_log.get(o, ("", ""))[0] == forged.id}

    wait_for(lambda: forged_declined() == {contributor_role("alice"), contributor_role("bob")},
             "the forged agent offered to both contributor roles and declined")
    honest = honest_agent(c, secrets, "alice")
    u = ups.wait_state("t1", "RUNNING")
    assert u.contributor == "alice" and task_agents(c)["t1"] == honest.id
    info = c.calls_of("ACCEPT")[0]["accept"]["operations"][0]["launch"]["task_infos"][0]
    assert {r["reservations"][0]["role"] for r in info["resources"]} == {"boid-contributors/alice"}
    assert {r["allocation_info"]["role"] for r in info["resources"]} == {"boid-contributors/alice"}
    assert b.contributors() == ["alice"]
    assert forged.id in b.health()["uncredited_agents"]
    said = [r for r in caplog.records if forged.id in r.getMessage()]
    assert len(said) == 1 and "earns nobody credit" in said[0].getMessage()   # once per agent


def test_agent_reserving_another_contributors_role_is_refused_registration(master) -> None:
    c = master.cluster
    secrets = secure(c, ("alice", "bob", "mallory"))
    alice_role = contributor_role("alice")
    for kw in ({"principal": "mallory", "secret": secrets["mallory"]},   # authenticated as mallory
               {"principal": "alice", "secret": "guessed"},              # alice's name, wrong secret
               {}):                                                       # not authenticated at all
        with pytest.raises(AgentRegistrationRefused, match="Refusing registration"):
            c.add_agent("alice", reserve_for=alice_role, **kw)
    with pytest.raises(AgentRegistrationRefused, match="Not authorized"):
        c.add_agent("x", principal="mallory", secret=secrets["mallory"], reserve_for=alice_role + "/sub")
    assert len(c.registration_refusals) == 4 and not c.agents
    # mallory may bring her own machine, reserved for her own role only
    mine = c.add_agent(None, principal="mallory", secret=secrets["mallory"], reserve_for=contributor_role("mallory"))
    assert mine.reserved_role == "boid-contributors/mallory"
    # roles outside boid's prefix keep the master's other rules (permissive by default)
    c.add_agent(None, principal="mallory", secret=secrets["mallory"], reserve_for="analytics")
    # every secret-bearing message names the principal, never the secret
    assert not any(s in m for s in secrets.values() for m in c.registration_refusals)


def test_two_agents_of_one_contributor_cannot_make_a_quorum(master, backends) -> None:
    """Replicas of one unit need distinct authenticated contributors: alice's two machines run one
    replica; the second waits for bob."""
    c = master.cluster
    secrets = secure(c)
    a1, a2 = honest_agent(c, secrets, "alice"), honest_agent(c, secrets, "alice")
    b = backends(master.url, contributors=CONTRIBUTORS)
    ups = Updates(b)
    b.submit(spec("r1"))
    b.submit(spec("r2"))
    wait_for(lambda: len(task_agents(c)) >= 1, "one replica launched")
    first = next(iter(task_agents(c)))
    ups.wait_state(first, "RUNNING")
    with c.lock:
        offers_before = c.offers_sent
    wait_for(lambda: c.offers_sent >= offers_before + 4, "alice's agents offered again")
    assert len(task_agents(c)) == 1, "a second replica ran on alice's other machine"
    bob = honest_agent(c, secrets, "bob")
    other = "r2" if first == "r1" else "r1"
    ups.wait_state(other, "RUNNING")
    placed = task_agents(c)
    assert placed[first] in (a1.id, a2.id) and placed[other] == bob.id
    contributors = {u.task_id: u.contributor for u in ups.seen if u.state == "RUNNING"}
    assert contributors == {first: "alice", other: "bob"}


def test_honest_contributors_are_credited_and_finish(master, backends) -> None:
    c = master.cluster
    secrets = secure(c)
    agents = {a: honest_agent(c, secrets, a) for a in CONTRIBUTORS}
    b = backends(master.url, contributors=CONTRIBUTORS)
    ups = Updates(b)
    b.submit(spec("r1"))
    b.submit(spec("r2"))
    for t in ("r1", "r2"):
        ups.wait_state(t, "RUNNING")
    for tid in ("r1", "r2"):
        c.finish_task(tid)
    done = {t: ups.wait_state(t, "FINISHED") for t in ("r1", "r2")}
    assert {u.contributor for u in done.values()} == set(CONTRIBUTORS)
    by_agent = {v: k for k, v in ((a, ag.id) for a, ag in agents.items())}
    assert {by_agent[task_agents(c)[t]] for t in done} == set(CONTRIBUTORS)
    assert b.contributors() == ["alice", "bob"]
    sub = c.calls_of("SUBSCRIBE")[-1]["subscribe"]["framework_info"]
    assert sub["roles"] == ["boid-contributors/alice", "boid-contributors/bob"]


def test_new_contributor_is_subscribed_without_losing_tasks(master, backends) -> None:
    c = master.cluster
    secrets = secure(c, ("alice", "bob", "carol"))
    honest_agent(c, secrets, "alice", cpus=1)
    carol = honest_agent(c, secrets, "carol", cpus=1)
    b = backends(master.url, contributors=["alice"])
    ups = Updates(b)
    b.submit(spec("t1", unit="u1"))
    ups.wait_state("t1", "RUNNING")
    b.submit(spec("t2", unit="u2"))            # alice is full; carol's role is not subscribed yet
    subs = len(c.calls_of("SUBSCRIBE"))
    b.set_contributors(["alice", "carol"])
    wait_for(lambda: len(c.calls_of("SUBSCRIBE")) > subs, "re-subscribed")
    assert ups.wait_state("t2", "RUNNING").contributor == "carol"
    assert task_agents(c)["t2"] == carol.id
    assert c.tasks["t1"].state == "TASK_RUNNING"
    assert c.calls_of("SUBSCRIBE")[-1]["subscribe"]["framework_info"]["roles"] == [
        "boid-contributors/alice", "boid-contributors/carol"]


# -- invariants, randomized --------------------------------------------------------------------

_ACCOUNTS = ["alice", "bob", "mallory"]
_resource = st.fixed_dictionaries(
    {"name": st.sampled_from(["cpus", "mem"]), "type": st.just("SCALAR"),
     "scalar": st.fixed_dictionaries({"value": st.integers(1, 8)})},
    optional={"reservations": st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["STATIC", "DYNAMIC"]),
        "role": st.sampled_from([contributor_role(a) for a in _ACCOUNTS] + ["*", "other"])}), max_size=2)})


@given(role=st.sampled_from([contributor_role(a) for a in _ACCOUNTS] + ["*", "proto-a"]),
       attr=st.sampled_from(_ACCOUNTS + [None]),
       resources=st.lists(_resource, max_size=4))
def test_credit_is_the_static_reservations_role_never_the_attribute(role, attr, resources) -> None:
    """For any offer: credited to X only if X is a known contributor, the offer is allocated to X's
    role and every usable resource is statically (by the agent's principal) reserved for it."""
    known = {contributor_role(a): a for a in ("alice", "bob")}
    offer = Offer("o", "a", "h", role, resources, {"boid_account": attr} if attr else {})
    credit_offer(offer, known)
    if offer.contributor is None:
        assert offer.usable == [] and offer.why_not
    else:
        assert known[role] == offer.contributor
        assert offer.usable and all(r["reservations"] == [{"type": "STATIC", "role": role}] for r in offer.usable)
        assert [r for r in resources if r.get("reservations") == [{"type": "STATIC", "role": role}]] == offer.usable


_agent = st.tuples(st.sampled_from(_ACCOUNTS + [None]),           # principal it authenticates as
                   st.booleans(),                                  # with the right secret
                   st.sampled_from(_ACCOUNTS + [None]))            # whose role it reserves for


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(agents=st.lists(_agent, min_size=1, max_size=6))
def test_only_a_contributors_own_principal_registers_its_reservation(master, agents) -> None:
    """Whatever agents try: one registered with a reservation for X's role authenticated as X."""
    c = master.cluster
    with c.lock:
        c.agents.clear()
    secrets = secure(c, _ACCOUNTS)
    for principal, right, reserve in agents:
        kw = {"principal": principal, "secret": secrets[principal] if right else "wrong"} if principal else {}
        try:
            agent = c.add_agent("alice", reserve_for=contributor_role(reserve) if reserve else None, **kw)
        except AgentRegistrationRefused:
            assert not (principal and right and reserve in (principal, None))
            continue
        assert principal is not None and right          # --authenticate_agents
        if agent.reserved_role is not None:
            assert agent.reserved_role == contributor_role(principal)


# -- boidctl mesos agent-credentials -------------------------------------------------------------

def _cli(*args: str, code: int = 0):
    from click.testing import CliRunner

    from boidcluster.cli.main import cli

    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r


def test_agent_credentials_configure_a_master_that_refuses_forgers(master, tmp_path, zk_hosts, monkeypatch) -> None:
    """The command's files, loaded into the master double as a real master loads them, let each
    contributor's agent reserve its own role only; no secret is printed; re-running keeps them."""
    import json

    from boidcluster.adapters.store import Store
    from boidcluster.model.kinds import parse_resource

    monkeypatch.delenv("BOID_CONTEXT", raising=False)
    monkeypatch.setenv("BOID_HOME", str(tmp_path / "home"))
    store = Store(zk_hosts)
    try:
        for acct, role in (("alice", "worker"), ("mallory", "worker"), ("dave", "dispatcher")):
            store.create(parse_resource({"apiVersion": "cluster.boid.com/v1alpha1", "kind": "Contributor",
                                         "metadata": {"name": acct},
                                         "spec": {"account": acct, "role": role, "researchers": ["r1"]}}))
    finally:
        store.close()
    out = tmp_path / "mesos"
    r = _cli("--zk", zk_hosts, "mesos", "agent-credentials", "--out", str(out))   # worker Contributors
    creds = json.loads((out / "master" / "credentials.json").read_text())
    assert sorted(c["principal"] for c in creds["credentials"]) == ["alice", "mallory"]
    assert not any(c["secret"] in r.output for c in creds["credentials"])
    for f in [out / "master" / "credentials.json", out / "master" / "acls.json", *(out / "agents").iterdir()]:
        assert f.stat().st_mode & 0o077 == 0, f"{f} readable by others"
    again = _cli("mesos", "agent-credentials", "--out", str(out), "--contributor", "alice",
                 "--contributor", "mallory", "--contributor", "bob")
    creds2 = json.loads((out / "master" / "credentials.json").read_text())
    assert creds2["credentials"][:2] == creds["credentials"] and len(creds2["credentials"]) == 3
    assert not any(c["secret"] in again.output for c in creds2["credentials"])
    c = master.cluster
    c.configure_agent_auth(secrets_of(creds2), json.loads((out / "master" / "acls.json").read_text()))
    mallory = json.loads((out / "agents" / "mallory.json").read_text())
    with pytest.raises(AgentRegistrationRefused):
        c.add_agent(None, reserve_for=contributor_role("alice"), **mallory)
    alice = json.loads((out / "agents" / "alice.json").read_text())
    assert c.add_agent(None, reserve_for=contributor_role("alice"), **alice).principal == "alice"
    bad = _cli("mesos", "agent-credentials", "--out", str(out), "--contributor", "../x", code=1)
    assert "cannot name a Mesos role component" in bad.output


_WORKER = st.tuples(st.sampled_from(["alice", "bob", "carol"]),     # who runs the machine
                    st.booleans())                                  # honest (reserved) or forged (attribute only)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workers=st.lists(_WORKER, min_size=1, max_size=5),
       ops=st.lists(st.tuples(st.sampled_from(["submit", "finish", "add"]), st.integers(0, 4)), min_size=3, max_size=12),
       late=_WORKER)
def test_random_agents_credit_only_their_authenticated_contributor(workers, ops, late) -> None:
    """Whatever machines join (honest ones reserved for their owner's role, forged ones claiming
    an account by attribute) and whatever runs and ends: every task ran on a reserved agent and
    was credited to that agent's principal, and the live replicas of a unit never share one."""
    master = MesosMasterDouble(heartbeat_interval=0.2, task_seconds=None, update_retry_seconds=0.5)
    c = master.cluster
    accounts = ["alice", "bob", "carol"]
    secrets = secure(c, accounts)

    def join(owner: str, honest: bool) -> None:
        if honest:
            honest_agent(c, secrets, owner, cpus=2)
        else:   # authenticated as its owner, unreserved, claiming someone else by attribute
            claim = accounts[(accounts.index(owner) + 1) % 3]
            c.add_agent(claim, principal=owner, secret=secrets[owner], cpus=2)

    for w in workers:
        join(*w)
    b = MesosBackend(master.url, roles=[ROLE], refuse_seconds=0.05, contributors=accounts)
    credited: dict[str, str] = {}
    n = 0

    def check() -> None:
        for u in b.updates(timeout=0.05):
            if u.contributor is not None:
                assert credited.setdefault(u.task_id, u.contributor) == u.contributor
        with c.lock:
            live: dict[str, list[str]] = {}
            for t in c.tasks.values():
                agent = c.agents[t.agent_id]
                assert agent.reserved_role == contributor_role(agent.principal), "ran on an unreserved agent"
                if t.id in credited:
                    assert credited[t.id] == agent.principal
                if t.state not in ("TASK_FINISHED", "TASK_KILLED", "TASK_FAILED", "TASK_LOST"):
                    live.setdefault(t.info["labels"]["labels"][1]["value"], []).append(agent.principal)
            for unit, principals in live.items():
                assert len(principals) == len(set(principals)), f"unit {unit}: replicas on {principals}"

    try:
        for op, k in ops:
            if op == "submit":
                for r in range(2):                 # two replicas of one unit
                    b.submit(spec(f"t{n}-{r}", unit=f"u{n}"))
                n += 1
            elif op == "finish":
                running = [t.id for t in c.running()]
                if running:
                    c.finish_task(running[k % len(running)])
            elif op == "add":
                join(*late)
            check()
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:        # let what can launch launch, checking all along
            check()
        check()
    finally:
        b.close()
        master.stop()
    assert master.validation_errors == [] and c.event_errors == []


def test_register_agents_acl_and_first_match_semantics(master) -> None:
    """The double's local authorizer on a hand-written --acls: `register_agents` (object ANY)
    and first-match order, as authorizer.cpp evaluates them."""
    c = master.cluster
    c.configure_agent_auth({"alice": "a", "bob": "b"}, {
        "register_agents": [{"principals": {"values": ["alice"]}, "agents": {"type": "ANY"}},
                            {"principals": {"type": "ANY"}, "agents": {"type": "NONE"}}],
        "reserve_resources": [{"principals": {"values": ["bob"]}, "roles": {"type": "NONE"}},   # bob: nothing
                              {"principals": {"type": "ANY"}, "roles": {"type": "ANY"}}]})
    assert c.add_agent(None, principal="alice", secret="a", reserve_for="anything").principal == "alice"
    with pytest.raises(AgentRegistrationRefused, match="Not authorized.*with principal 'bob'"):
        c.add_agent(None, principal="bob", secret="b")
    c.configure_agent_auth({"alice": "a", "bob": "b"}, {
        "reserve_resources": [{"principals": {"values": ["bob"]}, "roles": {"type": "NONE"}},
                              {"principals": {"type": "ANY"}, "roles": {"type": "ANY"}}]})
    assert c.add_agent(None, principal="bob", secret="b").reserved_role is None     # no reservation: no check
    with pytest.raises(AgentRegistrationRefused, match="Not authorized"):
        c.add_agent(None, principal="bob", secret="b", reserve_for="x")
    with pytest.raises(ValueError, match="does not evaluate"):
        c.configure_agent_auth({}, {"run_tasks": []})
