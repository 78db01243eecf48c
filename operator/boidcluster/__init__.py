"""Boid cluster: a Kubernetes-style operator for cluster-at-home computing.

Layers (import downward only, enforced by import-linter in pyproject.toml):
cli -> reconcilers -> engine -> adapters -> model.
"""

__version__ = "0.1.0"
