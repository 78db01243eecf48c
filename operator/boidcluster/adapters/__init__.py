"""Adapters: the only code that talks to the outside world (ZooKeeper, chain RPC, Marathon, Mesos, storage).

Reconcilers receive adapters through small interfaces, so the same reconciler runs against the
embedded local world and a real cluster.
"""
