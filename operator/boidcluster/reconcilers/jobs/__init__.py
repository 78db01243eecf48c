"""Jobs end to end: unit expansion, dispatch over an execution backend, replication, amalgamation.

Importing this package registers the Job reconciler on `boidcluster.reconcilers.registry`.
An operator process provides `world.backend` (e.g. adapters.local.backend.LocalBackend) and
`world.storage`; `world.dispatcher` (a Dispatcher over the backend) is made on first use unless
given; `world.ledger` is optional (see reconciler.py for the interface it is called with).
"""

from .dispatcher import Dispatcher, dispatcher_for
from .reconciler import reconcile_job
from .units import Unit, expand

__all__ = ["Dispatcher", "dispatcher_for", "reconcile_job", "Unit", "expand"]
