"""`boidctl dashboard`: serve the read-only web dashboard of a cluster (see boidcluster.dashboard).

It finds the cluster as every boidctl command does (--zk, $BOID_ZK, the embedded cluster's
cluster.json) and also takes the chain and the operator's metrics from there unless given. It
starts even when ZooKeeper is down: the page says so and what to do, and follows once it is up.
"""

from __future__ import annotations

from typing import Any

import click

from .context import Ctx, Failure, friendly, read_cluster

DEFAULT_PORT = 8090


def start_dashboard(zk: str, *, port: int, address: str = "127.0.0.1", store: Any = None, store_factory: Any = None,
                    chain_url: str | None = None, metrics_registry: Any = None,
                    metrics_url: str | None = None, refresh: float = 2.0, timeout: float = 5.0):
    """A running Dashboard (stop() it); `metrics_registry` for an operator in this process. `store`:
    an open store to share (the operator's, logged in as the operator); else `store_factory` opens
    one (and again after ZooKeeper is lost) as the caller's identity; else anonymously."""
    from boidcluster.dashboard.server import Dashboard, registry_metrics, url_metrics

    if metrics_registry is not None:
        metrics, source = registry_metrics(metrics_registry), "this operator process"
    elif metrics_url:
        metrics, source = url_metrics(metrics_url), metrics_url
    else:
        metrics, source = None, None
    try:
        return Dashboard(zk, host=address, port=port, store=store, store_factory=store_factory, chain_url=chain_url,
                         metrics=metrics, metrics_source=source, refresh=refresh, timeout=timeout).start()
    except OSError as e:
        raise Failure(f"{e} (choose another with --port)") from None


@click.command("dashboard")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port to serve on (0: any free port).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to bind. Loopback by default: the page shows accounts and money.")
@click.option("--chain-url", metavar="URL", help="Node RPC for fund and time rows (default: the embedded cluster's).")
@click.option("--metrics-url", metavar="URL",
              help="The operator's /metrics, for leader, queue depth and latency (default: the embedded cluster's).")
@click.option("--refresh", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="How often chain rows and metrics are read again (store changes are pushed at once).")
@click.pass_obj
@friendly
def dashboard(ctx: Ctx, port: int, address: str, chain_url: str | None, metrics_url: str | None,
              refresh: float) -> None:
    """Serve a read-only web dashboard: protocols, jobs, contributors, money, operator health."""
    from .cluster import _wait_for_signal

    info = read_cluster()
    chain_url = chain_url or info.get("chain")
    if not metrics_url and info.get("health"):
        metrics_url = info["health"].rstrip("/") + "/metrics"
    try:
        # the current context's identity (a secured cluster lets anonymous clients read nothing)
        dash = start_dashboard(ctx.zk, port=port, address=address, store_factory=lambda: ctx.open_store(timeout=5.0),
                               chain_url=chain_url, metrics_url=metrics_url, refresh=refresh)
    except Failure as e:
        if info.get("dashboard"):
            e.message += f"; the embedded cluster already serves a dashboard at {info['dashboard']}"
        raise
    click.echo(f"dashboard on {dash.url} (read-only; ZooKeeper {ctx.zk}"
               + (f", chain {chain_url}" if chain_url else ", no chain") + "); Ctrl-C to stop", err=True)
    try:
        _wait_for_signal()
    finally:
        dash.stop()
