"""The read-only web dashboard: protocols, jobs, contributors, money and operator health at a glance.

Its own layer between the CLI and the reconcilers (`cli > dashboard > reconcilers > ...`): it reads
the store (watches), the chain (tables) and the operator's Prometheus metrics, and never writes.
`readmodel` turns those into the typed views a page shows, `live` keeps them current and tells
browsers (server-sent events), `app` serves the page and its vendored assets, `server` runs it.
"""
