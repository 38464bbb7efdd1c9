"""The `dynakv` command: serve a node, run a dev cluster, and talk to a cluster.

    dynakv serve --config FILE [--node ID]
    dynakv dev [--data-dir DIR] [--nodes 3] [--policy lww|siblings]
    dynakv put KEY VALUE [--ttl S] [--context C] [--consistency LEVEL]
    dynakv get KEY [--consistency LEVEL] [--show-context]
    dynakv delete KEY [--context C] [--consistency LEVEL]
    dynakv status

Client commands read ``--endpoints`` (comma-separated host:port) or the
``DYNAKV_ENDPOINTS`` environment variable, default the dev cluster.
Exit codes: 0 ok, 1 error, 2 usage, 3 key not found.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import click

from dynakv.errors import DynakvError
from dynakv.sim.cli import sim_command

DEV_ENDPOINTS = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
CONSISTENCY = click.Choice(["one", "quorum", "all"])


@click.group()
@click.version_option(package_name="dynakv")
def main() -> None:
    """dynakv: a leaderless, Dynamo-style distributed key-value store."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path))
@click.option("--node", "node_id", default=None, help="Node id, if the file does not name one.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--join", is_flag=True, help="Ask to join the ring once started (a new node).")
def serve(config_path: Path, node_id: str | None, log_level: str, join: bool) -> None:
    """Run one node until SIGTERM or Ctrl-C (or until it has left the ring)."""
    import dataclasses

    from dynakv.config import ConfigError, load_node_config
    from dynakv.node.runtime import run

    try:
        config = load_node_config(config_path, node_id)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if join:
        config = dataclasses.replace(config, join=True)
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s {config.node_id} %(levelname)s %(name)s %(message)s",
    )
    run(config)


@main.command()
@click.option(
    "--data-dir", default="./data/dev", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 32))
@click.option(
    "--http-base-port",
    default=8001,
    show_default=True,
    type=int,
    help="HTTP port of node n1; node ni serves at base+i-1.",
)
@click.option("--rpc-base-port", default=9001, show_default=True, type=int)
@click.option("--policy", default="lww", show_default=True, type=click.Choice(["lww", "siblings"]))
@click.option("--replicas", default=3, show_default=True, type=click.IntRange(1, 32))
def dev(
    data_dir: Path, nodes: int, http_base_port: int, rpc_base_port: int, policy: str, replicas: int
) -> None:
    """Start a local cluster of separate node processes on loopback."""
    from dynakv.node.dev import DevCluster, run_dev

    cluster = DevCluster(
        data_dir=data_dir.resolve(),
        nodes=nodes,
        http_base_port=http_base_port,
        rpc_base_port=rpc_base_port,
        conflict_policy=policy,
        replicas=replicas,
    )
    sys.exit(run_dev(cluster))


@main.command("dev-join")
@click.option(
    "--data-dir", default="./data/dev", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--nodes", default=3, show_default=True, help="Nodes the dev cluster started with.")
@click.option("--node", "node_id", required=True, help="The new node's id, e.g. n4.")
@click.option("--http-port", type=click.IntRange(1, 65535), required=True)
@click.option("--rpc-port", type=click.IntRange(1, 65535), required=True)
@click.option("--zone", default="z1", show_default=True)
@click.option("--rpc-base-port", default=9001, show_default=True, type=int)
def dev_join(
    data_dir: Path,
    nodes: int,
    node_id: str,
    http_port: int,
    rpc_port: int,
    zone: str,
    rpc_base_port: int,
) -> None:
    """Add a node to a running `dynakv dev` cluster: write its config (seeds: the dev
    cluster's nodes, its secret) and run it in the foreground; it joins the ring."""
    from dynakv.node.dev import DevCluster

    cluster = DevCluster(data_dir=data_dir.resolve(), nodes=nodes, rpc_base_port=rpc_base_port)
    config = cluster.write_joiner_config(node_id, http_port, rpc_port, zone)
    click.echo(f"config {config}; leave with: dynakv admin leave --endpoint 127.0.0.1:{http_port}")
    serve.callback(config, None, "INFO", True)  # type: ignore[misc]


def _client(endpoints: str) -> Any:
    from dynakv.client.syncclient import Client

    return Client([e.strip() for e in endpoints.split(",") if e.strip()])


def _fail(exc: DynakvError) -> None:
    body = {"code": exc.code, "message": exc.message, **exc.facts()}
    click.echo(json.dumps({"error": body}, default=str), err=True)
    sys.exit(1)


endpoints_option = click.option(
    "--endpoints", envvar="DYNAKV_ENDPOINTS", default=DEV_ENDPOINTS, show_default=True
)
consistency_option = click.option(
    "--consistency", default="quorum", show_default=True, type=CONSISTENCY
)


@main.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option("--ttl", "ttl_s", type=click.IntRange(min=1), default=None, help="Seconds.")
@click.option("--context", default=None, help="X-Dynakv-Context from an earlier get.")
@consistency_option
@endpoints_option
def put(
    key: str,
    value: str | None,
    ttl_s: int | None,
    context: str | None,
    consistency: str,
    endpoints: str,
) -> None:
    """Store VALUE (or standard input) under KEY; prints the new context."""
    data = value.encode() if value is not None else sys.stdin.buffer.read()
    try:
        with _client(endpoints) as client:
            new_context = client.put(
                key.encode(), data, consistency=consistency, ttl_s=ttl_s, context=context
            )
    except DynakvError as exc:
        _fail(exc)
    click.echo(new_context)


@main.command()
@click.argument("key")
@click.option(
    "--show-context",
    is_flag=True,
    help="Print 'context: TOKEN' on standard error, on its own line, before the value.",
)
@consistency_option
@endpoints_option
def get(key: str, show_context: bool, consistency: str, endpoints: str) -> None:
    """Print KEY's value; siblings are printed one per line as JSON.

    Standard output carries the value's exact bytes (plus a newline when it is
    a terminal and the value lacks one). The context goes to standard error
    first, ending its own line, so the two never share a line when both reach
    one terminal, whatever the value ends with.
    """
    try:
        with _client(endpoints) as client:
            item = client.get(key.encode(), consistency=consistency)
    except DynakvError as exc:
        _fail(exc)
    if show_context and item is not None:
        sys.stdout.flush()
        click.echo(f"context: {item.context}", err=True)
    if item is None or (item.value is None and not item.siblings):
        click.echo("not found", err=True)
        sys.exit(3)
    if item.siblings and len(item.siblings) > 1:
        for sibling in item.siblings:
            click.echo(json.dumps(sibling.decode("utf-8", "backslashreplace")))
        return
    assert item.value is not None
    _write_value(sys.stdout.buffer, item.value, terminal=sys.stdout.isatty())


def _write_value(out: BinaryIO, value: bytes, *, terminal: bool) -> None:
    """``value`` as is for scripts; on a terminal, ended by a newline so the prompt starts anew."""
    out.write(value)
    if terminal and not value.endswith(b"\n"):
        out.write(b"\n")
    out.flush()


@main.command()
@click.argument("key")
@click.option("--context", default=None)
@consistency_option
@endpoints_option
def delete(key: str, context: str | None, consistency: str, endpoints: str) -> None:
    """Delete KEY (writes a tombstone)."""
    try:
        with _client(endpoints) as client:
            client.delete(key.encode(), consistency=consistency, context=context)
    except DynakvError as exc:
        _fail(exc)


@main.command()
@endpoints_option
@click.option("--json", "as_json", is_flag=True)
def status(endpoints: str, as_json: bool) -> None:
    """Show the cluster as one node sees it: peers, zones, ring."""
    try:
        with _client(endpoints) as client:
            info = client.status()
    except DynakvError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console

    Console().print(members_table(info))


def members_table(info: dict[str, Any]) -> Any:
    """The members as the node sees them (gossip), with whether each answers a ping."""
    from rich.table import Table

    table = Table(title=f"dynakv cluster {info.get('cluster')} as seen by {info.get('node_id')}")
    columns = ("node", "zone", "http", "state", "partitions", "hints held", "answers", "rtt ms")
    for column in columns:
        table.add_column(column)
    peers = info.get("peers", {})
    for member in info.get("members", []):
        node_id = member["node_id"]
        ping = {"answers": True} if node_id == info.get("node_id") else peers.get(node_id, {})
        state = member["state"]
        table.add_row(
            node_id,
            str(member["zone"]),
            str(member["http"]),
            state if state == "up" else f"[bold red]{state}[/]",
            str(member["partitions"]),
            str(member["hints_held"]),
            "yes" if ping.get("answers") else "NO",
            str(ping.get("rtt_ms", "")),
        )
    return table


@main.group()
def admin() -> None:
    """Operate on a node: repair, join, leave, remove."""


endpoint_option = click.option(
    "--endpoint",
    default="127.0.0.1:8001",
    show_default=True,
    help="The node (host:port of its HTTP API) that carries it out.",
)


def timeout_option(default_s: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=1),
        default=default_s,
        show_default=True,
        help="Seconds to wait for the answer.",
    )


def _admin_call(endpoint: str, method: str, path: str, timeout_s: float) -> tuple[int, Any]:
    """One request to a node's HTTP API: (status, JSON body); unreachable exits 1."""
    import http.client

    host, _, port = endpoint.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (OSError, ValueError) as exc:
        click.echo(json.dumps({"error": {"code": "Unreachable", "message": str(exc)}}), err=True)
        sys.exit(1)
    finally:
        connection.close()


@admin.command()
@click.option(
    "--partition",
    type=click.IntRange(0, 65535),
    default=None,
    help="Only this partition (default: every partition the node replicates).",
)
@endpoint_option
@timeout_option(600.0)
def repair(partition: int | None, endpoint: str, timeout_s: float) -> None:
    """Run one anti-entropy pass now on one node; print the keys and bytes it moved."""
    path = "/v1/admin/repair" + (f"?partition={partition}" if partition is not None else "")
    status_code, body = _admin_call(endpoint, "POST", path, timeout_s)
    if status_code != 200:
        click.echo(json.dumps(body), err=True)
        sys.exit(1)
    click.echo(
        f"repaired {body['partitions']} partition(s) in {body['rounds_total']} round(s): "
        f"{body['keys_moved']} key(s), {body['bytes_moved']} byte(s) moved "
        f"({body['rounds_failed']} round(s) failed, {body['peers_skipped']} replica(s) "
        "skipped as not up)"
    )
    click.echo(json.dumps(body, indent=2))


def _ring_change(endpoint: str, path: str, timeout_s: float, wait: bool) -> None:
    """Ask for a ring change; with ``wait``, poll the node's status until the ring's
    epoch moves past the one it had (the change committed), bounded by ``timeout_s``."""
    import time

    _, before = _admin_call(endpoint, "GET", "/v1/status", timeout_s)
    status_code, body = _admin_call(endpoint, "POST", path, timeout_s)
    if status_code != 202:
        click.echo(json.dumps(body), err=True)
        sys.exit(1)
    click.echo(f"accepted: {body['accepted']}")
    if not wait:
        return
    epoch = before.get("ring", {}).get("epoch", 0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        try:
            _, now = _admin_call(endpoint, "GET", "/v1/status", 5.0)
        except SystemExit:
            click.echo("the node stopped answering (a node that left stops)")
            return
        if now.get("ring", {}).get("epoch", 0) > epoch:
            click.echo(f"committed: ring epoch {now['ring']['epoch']}")
            return
    click.echo(f"not committed within {timeout_s:.0f} s; see dynakv status", err=True)
    sys.exit(1)


wait_option = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait for the commit."
)


@admin.command()
@endpoint_option
@timeout_option(600.0)
@wait_option
def join(endpoint: str, timeout_s: float, wait: bool) -> None:
    """Ask the node at --endpoint (started with seeds, not yet a member) to join."""
    _ring_change(endpoint, "/v1/admin/join", timeout_s, wait)


@admin.command()
@endpoint_option
@timeout_option(600.0)
@wait_option
def leave(endpoint: str, timeout_s: float, wait: bool) -> None:
    """Decommission the node at --endpoint: it hands off every partition, then stops."""
    _ring_change(endpoint, "/v1/admin/leave", timeout_s, wait)


@admin.command()
@click.argument("node_id")
@endpoint_option
@timeout_option(600.0)
@wait_option
def remove(node_id: str, endpoint: str, timeout_s: float, wait: bool) -> None:
    """Remove a dead node: its partitions are re-replicated from the survivors."""
    _ring_change(endpoint, f"/v1/admin/remove?node={node_id}", timeout_s, wait)


main.add_command(
    sim_command
)  # `dynakv sim --seed S`: the deterministic simulator (docs/simulation.md)

if __name__ == "__main__":
    main()
