"""Shared fixtures live in tests/fixtures/ (one module per real server), loaded here as plugins."""

pytest_plugins = ["fixtures.zookeeper", "fixtures.chain", "fixtures.operator", "fixtures.tenancy"]
