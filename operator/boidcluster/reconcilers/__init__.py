"""Reconcilers: for each kind, desired (spec) vs observed (world) -> actions -> status.

Every module here registers its reconciler on the one `registry`; the operator runs them all.
"""

from boidcluster.engine.reconciler import Registry

registry = Registry()
