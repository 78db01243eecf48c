"""Scenario checks of clusterjobs + clusterreg on ipyeos's in-process ChainTester.

Not part of `make test`: ChainTester works only when Python runs inside the ipyeos binary.
Run from the repository root:

    .venv/bin/ipyeos -m pytest contracts/tests/scenario_test.py -q -p no:cacheprovider

It deploys contracts/build/*.wasm|abi (run `make contracts` first), the same bytes the operator deploys,
and checks: exact payout arithmetic (Python big integers as the oracle), fund conservation, duplicate
units rejected, wrong signers rejected, a second payout paying nothing, and the other assertion texts
that the operator's chain adapter matches on. The permanent per-action integration tests run against a
real node under plain pytest (tests/integration/).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

if "RUN_IPYEOS" not in os.environ:  # plain pytest: ChainTester would kill the process
    pytest.skip("ChainTester needs the ipyeos binary: run with `.venv/bin/ipyeos -m pytest`",
                allow_module_level=True)

from ipyeos.chaintester import ChainTester  # noqa: E402

BUILD = Path(__file__).resolve().parent.parent / "build"
KEY = "EOS6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5GDW5CV"  # ChainTester's built-in dev key
H = 3_600_000_000
MAX_AMOUNT = (1 << 62) - 1
U64_MAX = (1 << 64) - 1
U64_FIELDS = {"id", "time", "total_time", "unpaid_time"}

JOBS, REG, TOKEN = "clusterjobs", "clusterreg", "eosio.token"
OPERATOR, OWNER, RESEARCHER, FUND = "boidoperator", "ownerteam", "researcher1", "fundaccount"
WORKER, WORKER2, DISPATCHER, MALLORY = "worker1", "worker2", "dispatcher1", "mallory"
OWNER2, RESEARCHER2, FUND2 = "ownerteam2", "researcher2", "fundaccoun2"


def asset(units: int, sym: str = "BOID", precision: int = 4) -> str:
    s = str(units).rjust(precision + 1, "0")
    return f"{s[:-precision]}.{s[-precision:]} {sym}" if precision else f"{s} {sym}"


def units(a: str) -> int:
    return int(a.split(" ")[0].replace(".", ""))


def expected_payment(time: int, rate: int) -> tuple[int, int]:
    """(amount, time paid for) with Python big integers: the oracle for the contract's arithmetic."""
    amount = time * rate // H
    if amount == 0:
        return 0, 0
    # the least t with t * rate >= amount * H
    time_paid = -(-amount * H // rate)
    assert time_paid <= time and (time - time_paid) * rate < H
    return amount, time_paid


def error_text(exc: BaseException) -> str:
    """The node's error messages with their ${placeholders} filled in (as nodeos's RPC reports them)."""
    try:
        data = json.loads(str(exc))
    except ValueError:
        return str(exc)
    out = []
    for item in (data.get("except") or {}).get("stack", []):
        text = item.get("format", "")
        for k, v in (item.get("data") or {}).items():
            text = text.replace("${" + k + "}", str(v))
        out.append(text)
    return " | ".join(out) or str(exc)


class Chain:
    def __init__(self) -> None:
        self.t = ChainTester()

    def push(self, account: str, action: str, args: dict, signer: str | dict | None = None):
        perms = signer if isinstance(signer, dict) else {signer or account: "active"}
        r = self.t.push_action(account, action, args, perms)
        self.t.produce_block()
        return r

    def fails(self, message: str, account: str, action: str, args: dict, signer=None) -> None:
        with pytest.raises(Exception) as e:
            self.push(account, action, args, signer)
        text = error_text(e.value)
        assert message in text, text


    def rows(self, code: str, scope: str, table: str) -> list[dict]:
        r = self.t.api.get_table_rows(True, code, scope, table, "", "", 100)
        if isinstance(r, (str, bytes)):
            r = json.loads(r)
        # nodeos writes large uint64 values as JSON strings; read them back as ints
        return [{k: int(v) if k in U64_FIELDS else v for k, v in row.items()} for row in r["rows"]]

    def row(self, code: str, scope: str, table: str) -> dict | None:
        rows = self.rows(code, scope, table)
        assert len(rows) <= 1
        return rows[0] if rows else None

    def balance(self, account: str, sym: str = "BOID") -> int:
        for r in self.rows(TOKEN, account, "accounts"):
            if r["balance"].endswith(" " + sym):
                return units(r["balance"])
        return 0

    def set_active(self, account: str, code_account: str) -> None:
        auth = {"threshold": 1, "keys": [{"key": KEY, "weight": 1}],
                "accounts": [{"permission": {"actor": code_account, "permission": "eosio.code"}, "weight": 1}],
                "waits": []}
        self.push("eosio", "updateauth",
                  {"account": account, "permission": "active", "parent": "owner", "auth": auth}, account)


def built(name: str) -> tuple[bytes, str]:
    return (BUILD / f"{name}.wasm").read_bytes(), (BUILD / f"{name}.abi").read_text()


def deploy(c: Chain, contracts: dict[str, tuple[bytes, str]]) -> None:
    for name, (wasm, abi) in contracts.items():
        c.t.deploy_contract(name, wasm, abi)
    c.t.produce_block()


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain({name: built(name) for name in (JOBS, REG)})


def make_chain(contracts: dict[str, tuple[bytes, str]]) -> Chain:
    c = Chain()
    for a in (JOBS, REG, OPERATOR, OWNER, RESEARCHER, FUND, WORKER, WORKER2, DISPATCHER, MALLORY,
              OWNER2, RESEARCHER2, FUND2):
        c.t.create_account("eosio", a, KEY, KEY, ram_bytes=4 * 1024 * 1024, stake_net=100_000, stake_cpu=100_000)
    c.t.produce_block()
    deploy(c, contracts)
    # The largest supply eosio allows, so the big-number cases can be paid for real.
    c.push(TOKEN, "create", {"issuer": "eosio", "maximum_supply": asset(MAX_AMOUNT)}, TOKEN)
    c.push(TOKEN, "issue", {"to": "eosio", "quantity": asset(MAX_AMOUNT), "memo": ""}, "eosio")
    c.push(TOKEN, "transfer", {"from": "eosio", "to": FUND, "quantity": asset(10_000_000_0000), "memo": ""}, "eosio")
    c.push(TOKEN, "transfer", {"from": "eosio", "to": FUND2, "quantity": asset(MAX_AMOUNT - 10_000_000_0000),
                               "memo": ""}, "eosio")
    c.set_active(JOBS, JOBS)
    c.set_active(FUND, REG)
    c.set_active(FUND2, REG)
    c.push(JOBS, "conntoreg", {"registry_contract": REG, "operator": OPERATOR})
    c.push(REG, "conntojobs", {"jobs_contract": JOBS})
    return c


def add_protocol(c: Chain, *, owner=OWNER, researcher=RESEARCHER, fund=FUND, fund_units=1_000_0000,
                 worker_rate=1_2345, dispatcher_rate=5000, signer=None, title="Protein folding"):
    c.push(REG, "addprotocol", {
        "title": title, "owner": owner, "researcher": researcher, "datadir": f"/boid/{researcher}",
        "fundaccount": fund, "fund": asset(fund_units), "tokencontract": TOKEN,
        "dispatcher_pay_rate": asset(dispatcher_rate), "worker_pay_rate": asset(worker_rate)}, signer or owner)


def set_rates(c: Chain, worker_rate: int, dispatcher_rate: int, *, owner=OWNER, researcher=RESEARCHER, fund=FUND):
    c.push(REG, "updprotocol", {
        "title": "Protein folding", "owner": owner, "researcher": researcher, "datadir": f"/boid/{researcher}",
        "fundaccount": fund, "tokencontract": TOKEN,
        "dispatcher_pay_rate": asset(dispatcher_rate), "worker_pay_rate": asset(worker_rate)}, owner)


def protocol(c: Chain, owner=OWNER) -> dict:
    return c.row(REG, owner, "protocol")


def payout(c: Chain, contributor=WORKER, kind="worker", *, owner=OWNER, funder=FUND, researcher=RESEARCHER,
           signer=None):
    return c.push(JOBS, "payout", {"owner": owner, "funder": funder, "researcher": researcher,
                                   "contributor": contributor, "type": kind}, signer or funder)


class TestScenario:
    def test_protocol_registry(self, chain: Chain) -> None:
        add_protocol(chain)
        p = protocol(chain)
        assert p == {"title": "Protein folding", "owner": OWNER, "researcher": RESEARCHER,
                     "datadir": f"/boid/{RESEARCHER}", "fundaccount": FUND, "fund": "1000.0000 BOID",
                     "tokencontract": TOKEN, "worker_pay_rate": "1.2345 BOID", "dispatcher_pay_rate": "0.5000 BOID",
                     "funded": "1000.0000 BOID"}
        chain.fails("protocol already exists", REG, "addprotocol", {
            "title": "x", "owner": OWNER, "researcher": RESEARCHER, "datadir": "", "fundaccount": FUND,
            "fund": asset(1), "tokencontract": TOKEN, "dispatcher_pay_rate": asset(1), "worker_pay_rate": asset(1)},
            OWNER)
        # symbol mismatch, wrong signer, unknown token symbol
        chain.fails("worker pay rate symbol must match the fund symbol", REG, "addprotocol", {
            "title": "x", "owner": OWNER2, "researcher": RESEARCHER2, "datadir": "", "fundaccount": FUND2,
            "fund": asset(1), "tokencontract": TOKEN, "dispatcher_pay_rate": asset(1),
            "worker_pay_rate": asset(1, "EOS")}, OWNER2)
        chain.fails("missing authority of ownerteam2", REG, "addprotocol", {
            "title": "x", "owner": OWNER2, "researcher": RESEARCHER2, "datadir": "", "fundaccount": FUND2,
            "fund": asset(1), "tokencontract": TOKEN, "dispatcher_pay_rate": asset(1), "worker_pay_rate": asset(1)},
            MALLORY)
        chain.fails("fund symbol is not a token of the token contract", REG, "addprotocol", {
            "title": "x", "owner": OWNER2, "researcher": RESEARCHER2, "datadir": "", "fundaccount": FUND2,
            "fund": asset(1, "NOPE"), "tokencontract": TOKEN, "dispatcher_pay_rate": asset(1, "NOPE"),
            "worker_pay_rate": asset(1, "NOPE")}, OWNER2)
        chain.fails("fund symbol precision does not match the token contract", REG, "addprotocol", {
            "title": "x", "owner": OWNER2, "researcher": RESEARCHER2, "datadir": "", "fundaccount": FUND2,
            "fund": asset(1, "BOID", 2), "tokencontract": TOKEN, "dispatcher_pay_rate": asset(1, "BOID", 2),
            "worker_pay_rate": asset(1, "BOID", 2)}, OWNER2)
        chain.fails("missing authority of ownerteam", REG, "delprotocol",
                    {"owner": OWNER, "researcher": RESEARCHER}, MALLORY)
        chain.fails("unknown protocol", REG, "delprotocol", {"owner": OWNER, "researcher": MALLORY}, OWNER)
        # updprotocol keeps the fund, changes the rest
        chain.push(REG, "updprotocol", {
            "title": "Folding v2", "owner": OWNER, "researcher": RESEARCHER, "datadir": "/boid/v2",
            "fundaccount": FUND, "tokencontract": TOKEN, "dispatcher_pay_rate": asset(5000),
            "worker_pay_rate": asset(1_2345)}, OWNER)
        p = protocol(chain)
        assert (p["title"], p["datadir"], p["fund"]) == ("Folding v2", "/boid/v2", "1000.0000 BOID")

    def test_registrations(self, chain: Chain) -> None:
        chain.fails("missing authority of researcher1", JOBS, "regworker",
                    {"worker": WORKER, "researcher": RESEARCHER}, MALLORY)
        chain.push(JOBS, "regworker", {"worker": WORKER, "researcher": RESEARCHER}, RESEARCHER)
        chain.push(JOBS, "regworker", {"worker": WORKER2, "researcher": RESEARCHER}, OPERATOR)
        chain.push(JOBS, "regdisptch", {"dispatcher": DISPATCHER, "researcher": RESEARCHER}, OPERATOR)
        chain.fails("worker already registered", JOBS, "regworker",
                    {"worker": WORKER, "researcher": RESEARCHER}, OPERATOR)
        chain.fails("dispatcher already registered", JOBS, "regdisptch",
                    {"dispatcher": DISPATCHER, "researcher": RESEARCHER}, RESEARCHER)
        assert chain.row(JOBS, WORKER, "worker") == {"researcher": RESEARCHER, "total_time": 0, "unpaid_time": 0}
        assert chain.row(JOBS, DISPATCHER, "dispatcher") == {"researcher": RESEARCHER, "total_time": 0,
                                                             "unpaid_time": 0}
        chain.fails("missing authority of clusterjobs", JOBS, "conntoreg",
                    {"registry_contract": REG, "operator": MALLORY}, MALLORY)

    def test_newjob_and_duplicates(self, chain: Chain) -> None:
        chain.fails("missing authority of boidoperator", JOBS, "newjob",
                    {"researcher": RESEARCHER, "worker": WORKER, "id": 1, "time": 5}, MALLORY)
        chain.fails("missing authority of boidoperator", JOBS, "newjob",
                    {"researcher": RESEARCHER, "worker": WORKER, "id": 1, "time": 5}, RESEARCHER)
        chain.fails("worker not registered", JOBS, "newjob",
                    {"researcher": RESEARCHER, "worker": MALLORY, "id": 1, "time": 5}, OPERATOR)
        chain.push(JOBS, "newjob", {"researcher": RESEARCHER, "worker": WORKER, "id": 1, "time": 1_234_567_891},
                   OPERATOR)
        chain.fails("unit already recorded", JOBS, "newjob",
                    {"researcher": RESEARCHER, "worker": WORKER, "id": 1, "time": 1_234_567_891}, OPERATOR)
        chain.fails("unit already recorded", JOBS, "newjob",
                    {"researcher": RESEARCHER, "worker": WORKER2, "id": 1, "time": 7}, OPERATOR)
        assert chain.row(JOBS, WORKER, "worker") == {"researcher": RESEARCHER, "total_time": 1_234_567_891,
                                                     "unpaid_time": 1_234_567_891}
        assert chain.rows(JOBS, RESEARCHER, "job") == [{"id": 1, "worker": WORKER, "time": 1_234_567_891}]
        chain.push(JOBS, "updatedptch", {"researcher": RESEARCHER, "dispatcher": DISPATCHER, "id": 1, "time": 999},
                   OPERATOR)
        chain.fails("unit already recorded", JOBS, "updatedptch",
                    {"researcher": RESEARCHER, "dispatcher": DISPATCHER, "id": 1, "time": 999}, OPERATOR)
        chain.fails("dispatcher not registered", JOBS, "updatedptch",
                    {"researcher": RESEARCHER, "dispatcher": WORKER, "id": 2, "time": 999}, OPERATOR)
        assert chain.rows(JOBS, RESEARCHER, "dptchlog") == [{"id": 1, "dispatcher": DISPATCHER, "time": 999}]

    def test_removejob(self, chain: Chain) -> None:
        chain.push(JOBS, "newjob", {"researcher": RESEARCHER, "worker": WORKER2, "id": 2, "time": 500}, OPERATOR)
        chain.fails("unit was recorded for another worker", JOBS, "removejob",
                    {"researcher": RESEARCHER, "worker": WORKER, "id": 2}, OPERATOR)
        chain.fails("missing authority of boidoperator", JOBS, "removejob",
                    {"researcher": RESEARCHER, "worker": WORKER2, "id": 2}, RESEARCHER)
        chain.push(JOBS, "removejob", {"researcher": RESEARCHER, "worker": WORKER2, "id": 2}, OPERATOR)
        assert chain.row(JOBS, WORKER2, "worker") == {"researcher": RESEARCHER, "total_time": 0, "unpaid_time": 0}
        chain.fails("unit not recorded", JOBS, "removejob",
                    {"researcher": RESEARCHER, "worker": WORKER2, "id": 2}, OPERATOR)
        chain.push(JOBS, "delworker", {"worker": WORKER2, "researcher": RESEARCHER}, OPERATOR)
        chain.fails("worker not registered", JOBS, "delworker", {"worker": WORKER2, "researcher": RESEARCHER},
                    OPERATOR)

    def test_payout_exact_and_conserved(self, chain: Chain) -> None:
        t, rate = 1_234_567_891, 1_2345
        amount, paid_time = expected_payment(t, rate)
        assert amount == 4233  # 1234.567891 s at 1.2345 BOID/h = 0.42335... BOID, floored
        fund_row, fund_bal, w_bal = units(protocol(chain)["fund"]), chain.balance(FUND), chain.balance(WORKER)

        chain.fails("missing authority of fundaccount", JOBS, "payout", {
            "owner": OWNER, "funder": FUND, "researcher": RESEARCHER, "contributor": WORKER, "type": "worker"},
            MALLORY)
        chain.fails("funder is not the protocol's fund account", JOBS, "payout", {
            "owner": OWNER, "funder": MALLORY, "researcher": RESEARCHER, "contributor": WORKER, "type": "worker"},
            MALLORY)
        chain.fails("type must be", JOBS, "payout", {
            "owner": OWNER, "funder": FUND, "researcher": RESEARCHER, "contributor": WORKER, "type": "boss"}, FUND)
        chain.fails("unknown protocol", JOBS, "payout", {
            "owner": OWNER2, "funder": FUND, "researcher": RESEARCHER, "contributor": WORKER, "type": "worker"}, FUND)
        chain.fails("worker not registered", JOBS, "payout", {
            "owner": OWNER, "funder": FUND, "researcher": RESEARCHER, "contributor": MALLORY, "type": "worker"}, FUND)

        payout(chain)
        assert chain.balance(WORKER) - w_bal == amount
        assert fund_bal - chain.balance(FUND) == amount
        assert fund_row - units(protocol(chain)["fund"]) == amount
        w = chain.row(JOBS, WORKER, "worker")
        assert w == {"researcher": RESEARCHER, "total_time": t, "unpaid_time": t - paid_time}
        assert 0 < w["unpaid_time"] and w["unpaid_time"] * rate < H  # the sub-unit remainder is kept

        # second payout: nothing left worth one unit
        chain.fails("nothing to pay", JOBS, "payout", {
            "owner": OWNER, "funder": FUND, "researcher": RESEARCHER, "contributor": WORKER, "type": "worker"}, FUND)
        # the remainder is not lost: it counts towards the next payout
        chain.push(JOBS, "newjob", {"researcher": RESEARCHER, "worker": WORKER, "id": 3, "time": 2_000_000_000},
                   OPERATOR)
        before = chain.row(JOBS, WORKER, "worker")["unpaid_time"]
        amount2, paid2 = expected_payment(before, rate)
        payout(chain)
        assert chain.balance(WORKER) - w_bal == amount + amount2
        # total paid equals the value of all the time recorded, floored once (nothing lost to rounding)
        assert amount + amount2 == (t + 2_000_000_000) * rate // H
        assert fund_row - units(protocol(chain)["fund"]) == amount + amount2 == fund_bal - chain.balance(FUND)
        # removing a job whose time is paid out is refused
        chain.fails("job time already paid out", JOBS, "removejob",
                    {"researcher": RESEARCHER, "worker": WORKER, "id": 3}, OPERATOR)
        chain.fails("worker has unpaid time", JOBS, "delworker", {"worker": WORKER, "researcher": RESEARCHER},
                    RESEARCHER)

    def test_dispatcher_uses_its_own_rate(self, chain: Chain) -> None:
        chain.push(JOBS, "updatedptch", {"researcher": RESEARCHER, "dispatcher": DISPATCHER, "id": 7,
                                         "time": 3 * H + 17}, OPERATOR)
        d_bal = chain.balance(DISPATCHER)
        unpaid = chain.row(JOBS, DISPATCHER, "dispatcher")["unpaid_time"]
        amount, paid = expected_payment(unpaid, 5000)
        assert amount == 15000
        payout(chain, DISPATCHER, "dispatcher")
        assert chain.balance(DISPATCHER) - d_bal == amount
        assert chain.row(JOBS, DISPATCHER, "dispatcher")["unpaid_time"] == unpaid - paid
        chain.fails("dispatcher has unpaid time", JOBS, "deldisptch",
                    {"dispatcher": DISPATCHER, "researcher": RESEARCHER}, OPERATOR)

    def test_registry_payout_only_from_jobs_contract(self, chain: Chain) -> None:
        args = {"owner": OWNER, "researcher": RESEARCHER, "worker": MALLORY, "unpaid_time": H, "type": "worker"}
        chain.fails("missing authority of clusterjobs", REG, "payout", args, MALLORY)
        # even with clusterjobs' own key, a direct (not inline) call is refused
        chain.fails("payout may only be called by the jobs contract", REG, "payout", args, JOBS)

    def test_fund_too_low_changes_nothing(self, chain: Chain) -> None:
        add_protocol(chain, owner=OWNER2, researcher=RESEARCHER, fund=FUND2, fund_units=10, worker_rate=1_0000,
                     title="Tiny fund")
        # owner and researcher differ, and the same researcher has two sponsors: rows are scoped by owner
        assert protocol(chain, OWNER2)["title"] == "Tiny fund"
        assert protocol(chain)["fundaccount"] == FUND
        w = chain.row(JOBS, WORKER, "worker")
        chain.push(JOBS, "newjob", {"researcher": RESEARCHER, "worker": WORKER, "id": 8, "time": H}, OPERATOR)
        bal = chain.balance(WORKER)
        chain.fails("fund too low", JOBS, "payout", {
            "owner": OWNER2, "funder": FUND2, "researcher": RESEARCHER, "contributor": WORKER, "type": "worker"},
            FUND2)
        assert chain.row(JOBS, WORKER, "worker")["unpaid_time"] == w["unpaid_time"] + H
        assert chain.balance(WORKER) == bal and units(protocol(chain, OWNER2)["fund"]) == 10
        # paying it from the first protocol's fund works
        payout(chain)
        chain.push(REG, "delprotocol", {"owner": OWNER2, "researcher": RESEARCHER}, OWNER2)
        assert protocol(chain, OWNER2) is None

    def test_big_numbers_exact(self, chain: Chain) -> None:
        """Random and extreme (time, rate) pairs: the contract's 128-bit arithmetic equals Python's."""
        add_protocol(chain, owner=OWNER2, researcher=RESEARCHER2, fund=FUND2, fund_units=MAX_AMOUNT - 10_000_000_0000,
                     worker_rate=1, dispatcher_rate=1)
        chain.push(JOBS, "regworker", {"worker": WORKER2, "researcher": RESEARCHER2}, RESEARCHER2)
        rnd = random.Random(20240611)
        cases = [(H, 1), (H - 1, 1), (1, H), (U64_MAX // 8, 1 << 20), ((1 << 50) + 12345, (1 << 40) + 777),
                 (123_456_789_012, 987_654_321)]
        cases += [(rnd.randrange(1, 1 << 48), rnd.randrange(1, 1 << 42)) for _ in range(6)]
        fund = units(protocol(chain, OWNER2)["fund"])
        paid_total = 0
        for i, (t, rate) in enumerate(cases):
            set_rates(chain, rate, 1, owner=OWNER2, researcher=RESEARCHER2, fund=FUND2)
            before = chain.row(JOBS, WORKER2, "worker")  # the previous case's remainder is still unpaid
            chain.push(JOBS, "newjob", {"researcher": RESEARCHER2, "worker": WORKER2, "id": 100 + i, "time": t},
                       OPERATOR)
            unpaid = before["unpaid_time"] + t
            amount, paid = expected_payment(unpaid, rate)
            if amount == 0:
                continue
            bal = chain.balance(WORKER2)
            payout(chain, WORKER2, owner=OWNER2, funder=FUND2, researcher=RESEARCHER2)
            assert chain.balance(WORKER2) - bal == amount, (t, rate)
            assert chain.row(JOBS, WORKER2, "worker")["unpaid_time"] == unpaid - paid, (t, rate)
            paid_total += amount
        assert fund - units(protocol(chain, OWNER2)["fund"]) == paid_total

    def test_overflows(self, chain: Chain) -> None:
        set_rates(chain, MAX_AMOUNT, 1, owner=OWNER2, researcher=RESEARCHER2, fund=FUND2)
        # 10_000 hours at the largest rate an asset can hold: the amount does not fit in an asset
        chain.push(JOBS, "newjob", {"researcher": RESEARCHER2, "worker": WORKER2, "id": 900, "time": H * 10_000},
                   OPERATOR)
        chain.fails("payout amount overflow", JOBS, "payout", {
            "owner": OWNER2, "funder": FUND2, "researcher": RESEARCHER2, "contributor": WORKER2, "type": "worker"},
            FUND2)
        total = chain.row(JOBS, WORKER2, "worker")["total_time"]
        chain.fails("time overflow", JOBS, "newjob", {"researcher": RESEARCHER2, "worker": WORKER2, "id": 901,
                                                      "time": U64_MAX - total + 1}, OPERATOR)


# The last commit whose build had no `funded` column (before clusterreg::addfund).
PRE_FUNDED = "b46b357"


def git_blob(path: str) -> bytes | None:
    root = BUILD.parent.parent
    r = subprocess.run(["git", "-C", str(root), "show", f"{PRE_FUNDED}:{path}"], capture_output=True)
    return r.stdout if r.returncode == 0 else None


def test_rows_from_before_funded_still_work_after_the_upgrade() -> None:
    """Deploy the old build, register and record time, upgrade to build/: the old row (without the
    `funded` binary extension) still pays out and updates; addfund gives it funded = fund + quantity."""
    old = {name: (git_blob(f"contracts/build/{name}.wasm"), git_blob(f"contracts/build/{name}.abi"))
           for name in (JOBS, REG)}
    if any(w is None or a is None for w, a in old.values()):
        pytest.skip(f"git has no build at {PRE_FUNDED}")
    c = make_chain({name: (w, a.decode()) for name, (w, a) in old.items()})
    add_protocol(c)
    assert "funded" not in protocol(c)
    c.push(JOBS, "regworker", {"worker": WORKER, "researcher": RESEARCHER}, OPERATOR)
    c.push(JOBS, "newjob", {"researcher": RESEARCHER, "worker": WORKER, "id": 1, "time": H}, OPERATOR)
    deploy(c, {name: built(name) for name in (JOBS, REG)})
    assert "funded" not in protocol(c)  # the row is as the old contract wrote it
    before = c.balance(WORKER)
    payout(c)  # clusterjobs and clusterreg read the short row; clusterreg rewrites it
    assert c.balance(WORKER) == before + 12345
    p = protocol(c)
    assert p["fund"] == asset(1000_0000 - 12345) and "funded" not in p
    set_rates(c, 20000, 5000)
    assert "funded" not in protocol(c)
    c.push(REG, "addfund", {"owner": OWNER, "researcher": RESEARCHER, "quantity": asset(5)}, OWNER)
    p = protocol(c)
    assert p["fund"] == p["funded"] == asset(1000_0000 - 12345 + 5)
