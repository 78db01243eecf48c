"""Reconcilers: for each kind, desired (spec) vs observed (world) -> actions -> status.

Every module here registers its reconciler on the one `registry`; the operator runs them all.
"""

from boidcluster.engine.reconciler import Registry

registry = Registry()

from boidcluster.model.resources import Job  # noqa: E402

from .admission import admit_job  # noqa: E402

registry.admission(Job)(admit_job)
