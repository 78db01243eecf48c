"""The composition root: what `operator run` and `dispatcher run` build. Two protocols'
dispatchers must be two Mesos frameworks (own id, own role), never one shared framework.
(Mesos master TEST DOUBLE from tests/doubles.)"""

from __future__ import annotations

import time

from boidcluster.adapters.store import Store
from boidcluster.cli.wiring import OperatorOptions, build_world, close_world
from doubles.mesos_master import MesosMasterDouble


def test_each_protocols_dispatcher_is_its_own_framework(zk_hosts, tmp_path):
    master = MesosMasterDouble(heartbeat_interval=0.2)
    store = Store(zk_hosts)
    worlds = []
    try:
        for proto in ("alpha", "beta"):
            opts = OperatorOptions(zk=zk_hosts, storage=f"file://{tmp_path}", backend="mesos",
                                   mesos_master=master.url, mesos_roles=[proto],
                                   mesos_state=f"/boid/v1/dispatchers/{proto}/mesos")
            worlds.append(build_world(opts, store))
        deadline = time.monotonic() + 10
        while len(master.cluster.frameworks) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        fws = list(master.cluster.frameworks.values())
        assert sorted(fw.info["name"] for fw in fws) == ["boid-alpha", "boid-beta"]
        assert sorted(r for fw in fws for r in fw.roles) == ["alpha", "beta"]
        paths = [f"/boid/v1/dispatchers/{p}/mesos/framework" for p in ("alpha", "beta")]
        while not all(store.client.exists(p) for p in paths) and time.monotonic() < deadline:
            time.sleep(0.05)
        ids = {store.client.get(p)[0].decode() for p in paths}
        assert ids == {fw.id for fw in fws}  # each kept its own framework id, for failover
        assert master.validation_errors == []
    finally:
        for w in worlds:
            close_world(w)
        store.close()
        master.stop()
