"""Reconcilers: for each kind, desired (spec) vs observed (world) -> actions -> status."""
