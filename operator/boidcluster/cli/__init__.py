"""boidctl: the kubectl-like command line."""
