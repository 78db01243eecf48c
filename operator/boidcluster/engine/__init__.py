"""The reconcile loop: watch, work queue, backoff, leader election, finalizers, status."""
