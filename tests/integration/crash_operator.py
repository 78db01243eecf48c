"""FAULT-INJECTION harness (test only): an operator process that SIGKILLs itself right after its
first successful payout, i.e. between the chain action and the status write that records it.

Usage: python crash_operator.py ZK_HOSTS CHAIN_URL KEYS_FILE STORAGE_URL
"""

import os
import signal
import sys

from boidcluster.adapters.chain import KeyRing
from boidcluster.adapters.chain.blocking import BlockingChain
from boidcluster.adapters.storage import Storage
from boidcluster.adapters.store import Store
from boidcluster.engine.operator import Operator
from boidcluster.engine.world import World
import boidcluster.reconcilers.protocol  # noqa: F401
from boidcluster.reconcilers import registry


class DieAfterWrite:
    def __init__(self, chain):
        self._chain = chain

    def __getattr__(self, name):
        attr = getattr(self._chain, name)
        if name != "payout":
            return attr

        def pay_then_die(*a, **kw):
            if attr(*a, **kw) is not None:
                os.kill(os.getpid(), signal.SIGKILL)

        return pay_then_die


zk, url, keys, storage = sys.argv[1:5]
store = Store(zk)
chain = BlockingChain.open(url, KeyRing.from_file(keys))
world = World(store=store, storage=Storage(storage), chain=DieAfterWrite(chain))
Operator(store, world, registry, workers=1).start()
signal.pause()
