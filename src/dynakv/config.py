"""Cluster and node configuration, read from TOML.

A config file describes the whole (static) cluster plus which node this
process is::

    node_id = "n1"                 # or `dynakv serve --node n1`
    data_dir = "./data/dev/n1"
    cluster_secret_file = "../cluster.secret"   # or $DYNAKV_CLUSTER_SECRET(_FILE)

    [cluster]
    name = "dev"
    partitions = 1024               # Q, a power of two; fixed for the cluster's life
    replicas = 3                    # N
    conflict_policy = "lww"         # or "siblings"

    [[nodes]]
    id = "n1"
    zone = "z1"
    http = "127.0.0.1:8001"
    rpc = "127.0.0.1:9001"

``[[nodes]]`` are the cluster's first members (the ring of epoch 1). A node
that joins later is not among them: its file names it with ``node_id`` and
gives its own ``zone``, ``http`` and ``rpc`` at the top level, plus ``seeds``
(RPC addresses of members) and ``join = true`` (or ``dynakv serve --join``).
After the join, the ring it holds (stored, epoch > 1) is what counts.

Every limit has a default here and a name ending in its unit. Bad config is
reported with the offending field; nothing starts.

The cluster secret (every member proves it in the RPC handshake) comes from,
in order: ``$DYNAKV_CLUSTER_SECRET`` (the secret itself), the file named by
``$DYNAKV_CLUSTER_SECRET_FILE``, or the file named by ``cluster_secret_file``
(relative to the config file). It is at least ``SECRET_BYTES_MIN`` bytes once
surrounding whitespace is stripped. It is never printed: ``NodeConfig``'s
repr leaves it out, and errors name the file, never its content.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dynakv.core.claimant import ClaimantTiming
from dynakv.core.failure_detector import MembershipTiming
from dynakv.core.record import ConflictPolicy, RecordBounds
from dynakv.core.transfer import PAGE_ITEMS_MAX, TransferTiming

log = logging.getLogger(__name__)

SECRET_BYTES_MIN: Final = 16
SECRET_ENV: Final = "DYNAKV_CLUSTER_SECRET"
SECRET_FILE_ENV: Final = "DYNAKV_CLUSTER_SECRET_FILE"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    zone: str
    http_host: str
    http_port: int
    rpc_host: str
    rpc_port: int

    @property
    def http_address(self) -> str:
        return f"{self.http_host}:{self.http_port}"

    @property
    def rpc_address(self) -> str:
        return f"{self.rpc_host}:{self.rpc_port}"


@dataclass(frozen=True, slots=True)
class Limits:
    key_bytes_max: int = 2048
    value_bytes_max: int = 400 * 1024
    ttl_s_max: int = 10 * 365 * 24 * 3600
    http_body_bytes_max: int = 1024 * 1024
    http_header_bytes_max: int = 16 * 1024
    http_connections_max: int = 4096
    http_pipeline_max: int = 64
    rpc_inflight_max: int = 8192
    rpc_frame_bytes_max: int = 8 * 1024 * 1024
    # Connections on the RPC port (members and not-yet-authenticated ones alike);
    # lowered at start-up to fit the open-file limit (node.resources).
    rpc_connections_max: int = 1024
    # A frame before the handshake has proven the cluster secret is at most this.
    rpc_handshake_frame_bytes_max: int = 256
    # Bytes of incomplete frames held across all RPC connections; past it the
    # connection whose frame would exceed it is closed.
    rpc_buffered_bytes_total_max: int = 64 * 1024 * 1024
    # Free space kept on the data directory's file system: below it, writes of
    # values are refused (507) while reads, deletes and tombstones go on.
    disk_reserve_bytes: int = 256 * 1024 * 1024
    # Hinted handoff: a fallback refuses new hints past this many bytes of them;
    # at most handoff_batch_max hinted writes per owner per handoff interval.
    hints_bytes_max: int = 1024 * 1024 * 1024
    handoff_batch_max: int = 64
    # Anti-entropy: the Merkle tree shape (the same on every node), streaming
    # pace, and bounds on one exchange.
    anti_entropy_tree_fanout: int = 16
    anti_entropy_tree_depth: int = 3
    anti_entropy_rate_bytes_per_s: int = 8 * 1024 * 1024
    anti_entropy_burst_bytes: int = 1024 * 1024
    anti_entropy_keys_per_round_max: int = 10_000
    # Records from peers: at most this many siblings, clock entries, node-id bytes.
    record_siblings_max: int = 128
    clock_entries_max: int = 256
    node_id_bytes_max: int = 128
    coordinator_inflight_max: int = 16384
    read_repair_inflight_max: int = 1024


@dataclass(frozen=True, slots=True)
class Timing:
    request_timeout_ms: int = 2000
    rpc_timeout_ms: int = 1500
    connect_timeout_ms: int = 500
    reconnect_backoff_ms_max: int = 1000
    sweep_interval_ms: int = 250
    sweep_batch_max: int = 1000
    tombstone_grace_s: int = 10 * 24 * 3600
    # No timestamp from a client context, a peer's record or the disk may be
    # further ahead of this node's wall clock (it would drag the HLC, and so
    # lww order, into the future); the HLC never moves past it either.
    clock_offset_ms_max: int = 60_000
    # RPC: the handshake must finish, and a frame once begun must arrive whole,
    # within these.
    rpc_handshake_timeout_ms: int = 2000
    rpc_frame_timeout_ms: int = 10_000
    disk_check_interval_ms: int = 1000
    # A write sent with an Idempotency-Key is applied at most once while its
    # entry lives: this long after it was minted (core.idempotency).
    idempotency_window_s: int = 600
    # Hints older than this are dropped (anti-entropy repairs what they held).
    hint_ttl_ms: int = 3 * 3600 * 1000
    handoff_interval_ms: int = 200
    # One anti-entropy round (one partition with one peer) per interval.
    anti_entropy_interval_ms: int = 1000
    anti_entropy_rpc_timeout_ms: int = 5000
    # Membership (SWIM with Lifeguard suspicion; core.failure_detector): a
    # crashed or paused member is down within about probe + suspicion time.
    membership_tick_ms: int = 50
    gossip_probe_interval_ms: int = 500
    gossip_probe_timeout_ms: int = 200
    gossip_suspicion_min_ms: int = 1500
    gossip_suspicion_max_ms: int = 6000
    gossip_interval_ms: int = 200
    gossip_sync_interval_ms: int = 5000
    # Ring changes (core.claimant): one join, leave or remove at a time.
    claimant_tick_ms: int = 100
    ring_change_heartbeat_ms: int = 1000
    ring_change_takeover_ms: int = 5000
    # A receiver down this long cancels the change; the operator retries.
    ring_change_down_cancel_ms: int = 30_000
    ring_change_request_timeout_ms: int = 15_000
    # Streaming: records and bytes per page (bounded by the RPC frame).
    transfer_page_items_max: int = 512
    transfer_page_bytes_max: int = 1024 * 1024
    # A node not among [[nodes]] asks its seeds for the ring this many times, 1 s apart.
    ring_fetch_attempts_max: int = 30

    def claimant(self) -> ClaimantTiming:
        """The claimant's timings: the drain and the drop grace outlast a request."""
        return ClaimantTiming(
            retry_interval_ms=min(500, self.ring_change_heartbeat_ms),
            heartbeat_ms=self.ring_change_heartbeat_ms,
            takeover_after_ms=max(self.ring_change_takeover_ms, 2 * self.ring_change_heartbeat_ms),
            write_drain_ms=self.request_timeout_ms + self.rpc_timeout_ms,
            drop_grace_ms=self.request_timeout_ms + self.rpc_timeout_ms,
            down_cancel_ms=self.ring_change_down_cancel_ms,
            request_timeout_ms=self.ring_change_request_timeout_ms,
            transfer=TransferTiming(
                page_items_max=min(self.transfer_page_items_max, PAGE_ITEMS_MAX),
                page_bytes_max=self.transfer_page_bytes_max,
            ),
        )

    def membership(self) -> MembershipTiming:
        """The membership state machine's timings from these settings."""
        return MembershipTiming(
            probe_interval_ms=self.gossip_probe_interval_ms,
            probe_timeout_ms=self.gossip_probe_timeout_ms,
            suspicion_min_ms=self.gossip_suspicion_min_ms,
            suspicion_max_ms=self.gossip_suspicion_max_ms,
            gossip_interval_ms=self.gossip_interval_ms,
            sync_interval_ms=self.gossip_sync_interval_ms,
        )

    http_read_timeout_ms: int = 30_000  # a request's first byte to its last
    http_idle_timeout_ms: int = 300_000  # keep-alive connection with nothing in flight


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeSpec, ...]
    partitions: int = 1024
    replicas: int = 3
    conflict_policy: ConflictPolicy = ConflictPolicy.LWW
    limits: Limits = field(default_factory=Limits)
    timing: Timing = field(default_factory=Timing)

    def record_bounds(self) -> RecordBounds:
        """The bounds every record and context from outside is checked against."""
        limits, timing = self.limits, self.timing
        return RecordBounds(
            clock_offset_ms_max=timing.clock_offset_ms_max,
            expiry_ahead_ms_max=1000 * max(limits.ttl_s_max, timing.tombstone_grace_s),
            value_bytes_max=limits.value_bytes_max,
            siblings_max=limits.record_siblings_max,
            clock_entries_max=limits.clock_entries_max,
            node_id_bytes_max=limits.node_id_bytes_max,
        )

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.node_id == node_id:
                return spec
        raise ConfigError(f"node_id {node_id!r} is not among [[nodes]]")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    cluster: ClusterConfig
    node_id: str
    data_dir: Path
    engine: str = "rocksdb"  # "rocksdb" or "memory" (tests only: loses data on restart)
    durable: bool = True  # acknowledge writes only after the WAL is fsynced
    cluster_secret: bytes = field(default=b"", repr=False)
    # Further secrets peers may prove while the cluster secret is rotated.
    cluster_secrets_accepted: tuple[bytes, ...] = field(default=(), repr=False)
    # Testing only: this node's wall clock runs this far ahead (or behind, < 0).
    clock_skew_ms: int = 0
    # RPC addresses this node gossips with to join; empty: every other [[nodes]].
    seeds: tuple[str, ...] = ()
    # A node not among [[nodes]]: its own spec, from the top-level zone/http/rpc.
    self_spec: NodeSpec | None = None
    # Ask to join the ring once started (a node not yet a member).
    join: bool = False

    def seed_addresses(self) -> tuple[str, ...]:
        if self.seeds:
            return self.seeds
        return tuple(n.rpc_address for n in self.cluster.nodes if n.node_id != self.node_id)

    @property
    def me(self) -> NodeSpec:
        if self.self_spec is not None:
            return self.self_spec
        return self.cluster.node(self.node_id)

    @property
    def is_first_member(self) -> bool:
        """Whether this node is among ``[[nodes]]``, the ring of epoch 1."""
        return any(n.node_id == self.node_id for n in self.cluster.nodes)


def _split_address(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(f"{where} must be 'host:port', got {value!r}")
    host, port_text = value.split(":")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where} has an invalid port: {value!r}")
    return host, int(port_text)


def _overrides(cls: type[Any], table: object, where: str) -> Any:
    if table is None:
        return cls()
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"[{where}] has unknown field {name!r}; known: {sorted(known)}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"[{where}].{name} must be a positive integer, got {value!r}")
    return cls(**table)


def parse_cluster(data: dict[str, Any]) -> ClusterConfig:
    cluster = data.get("cluster", {})
    raw_nodes = data.get("nodes", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("[[nodes]] must list at least one node")
    nodes = []
    for index, raw in enumerate(raw_nodes):
        where = f"nodes[{index}]"
        for key in ("id", "zone", "http", "rpc"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}.{key} is required (a non-empty string)")
        http_host, http_port = _split_address(raw["http"], f"{where}.http")
        rpc_host, rpc_port = _split_address(raw["rpc"], f"{where}.rpc")
        nodes.append(NodeSpec(raw["id"], raw["zone"], http_host, http_port, rpc_host, rpc_port))
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids must be unique: {ids}")
    partitions = cluster.get("partitions", 1024)
    if (
        not isinstance(partitions, int)
        or partitions < 1
        or partitions & (partitions - 1)
        or partitions > 65536
    ):
        raise ConfigError(f"cluster.partitions must be a power of two <= 65536, got {partitions}")
    replicas = cluster.get("replicas", 3)
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"cluster.replicas must be a positive integer, got {replicas}")
    try:
        policy = ConflictPolicy(cluster.get("conflict_policy", "lww"))
    except ValueError:
        raise ConfigError(
            f"cluster.conflict_policy must be 'lww' or 'siblings', got "
            f"{cluster.get('conflict_policy')!r}"
        ) from None
    limits = _overrides(Limits, data.get("limits"), "limits")
    from dynakv.net.handshake import HANDSHAKE_FRAME_BYTES_MIN

    if limits.rpc_handshake_frame_bytes_max < HANDSHAKE_FRAME_BYTES_MIN:
        raise ConfigError(
            f"[limits].rpc_handshake_frame_bytes_max must be at least "
            f"{HANDSHAKE_FRAME_BYTES_MIN} (a handshake frame naming the longest node id)"
        )
    return ClusterConfig(
        name=str(cluster.get("name", "dynakv")),
        nodes=tuple(sorted(nodes, key=lambda n: n.node_id)),
        partitions=partitions,
        replicas=replicas,
        conflict_policy=policy,
        limits=limits,
        timing=_overrides(Timing, data.get("timing"), "timing"),
    )


def generate_secret_file(path: Path) -> None:
    """Write a fresh random cluster secret to ``path`` (mode 0600) unless one exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32) + "\n")


def load_secret(
    config_dir: Path, configured_file: object, environ: Mapping[str, str]
) -> tuple[bytes, tuple[bytes, ...]]:
    """The cluster secret, and the further secrets accepted from peers while one is
    rotated, from the environment or a file (see the module docstring). A file
    holds one secret per line: the first is this node's; the others are accepted."""
    if environ.get(SECRET_ENV):
        lines = [environ[SECRET_ENV].strip().encode()]
        where = f"${SECRET_ENV}"
    else:
        named = environ.get(SECRET_FILE_ENV) or configured_file
        if not named:
            raise ConfigError(
                "no cluster secret: set cluster_secret_file in the config, or "
                f"${SECRET_FILE_ENV} or ${SECRET_ENV} (every member must use the same one; "
                "`dynakv dev` generates one)"
            )
        if not isinstance(named, str):
            raise ConfigError("cluster_secret_file must be a path (a string)")
        path = Path(named) if Path(named).is_absolute() else config_dir / named
        try:
            lines = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"cannot read cluster_secret_file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("cluster secret file %s is readable by others; chmod 600 it", path)
        where = str(path)
    if not lines:
        raise ConfigError(f"the cluster secret from {where} is empty")
    for number, secret in enumerate(lines, 1):
        if len(secret) < SECRET_BYTES_MIN:
            raise ConfigError(
                f"the cluster secret on line {number} of {where} is {len(secret)} bytes; "
                f"at least {SECRET_BYTES_MIN} are required"
            )
    return lines[0], tuple(lines[1:])


def load_node_config(
    path: Path, node_id: str | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    cluster = parse_cluster(data)
    chosen = node_id or data.get("node_id")
    if not isinstance(chosen, str):
        raise ConfigError("node_id is required (in the file or as --node)")
    self_spec = _self_spec(data, chosen, cluster)
    data_dir = Path(str(data.get("data_dir", f"./data/{chosen}")))
    if not data_dir.is_absolute():
        data_dir = (path.parent / data_dir).resolve()
    engine = str(data.get("engine", "rocksdb"))
    if engine not in ("rocksdb", "memory"):
        raise ConfigError(f"engine must be 'rocksdb' or 'memory', got {engine!r}")
    durable = data.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigError("durable must be true or false")
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(seed, str) for seed in seeds):
        raise ConfigError("seeds must be a list of 'host:port' RPC addresses")
    for index, seed in enumerate(seeds):
        _split_address(seed, f"seeds[{index}]")
    skew = data.get("clock_skew_ms", 0)
    if not isinstance(skew, int) or isinstance(skew, bool) or abs(skew) > 86_400_000:
        raise ConfigError("clock_skew_ms must be an integer within a day (testing only)")
    secret, accepted = load_secret(
        path.parent,
        data.get("cluster_secret_file"),
        os.environ if environ is None else environ,
    )
    return NodeConfig(
        cluster=cluster,
        node_id=chosen,
        data_dir=data_dir,
        engine=engine,
        durable=durable,
        cluster_secret=secret,
        cluster_secrets_accepted=accepted,
        clock_skew_ms=skew,
        seeds=tuple(seeds),
        self_spec=self_spec,
        join=_flag(data, "join"),
    )


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _self_spec(data: dict[str, Any], node_id: str, cluster: ClusterConfig) -> NodeSpec | None:
    """A node among ``[[nodes]]`` is described there; another (a joiner) at the top level."""
    if any(n.node_id == node_id for n in cluster.nodes):
        return None
    for key in ("zone", "http", "rpc"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(
                f"node_id {node_id!r} is not among [[nodes]]: a joining node needs its own "
                f"top-level {key!r} (and seeds)"
            )
    http_host, http_port = _split_address(data["http"], "http")
    rpc_host, rpc_port = _split_address(data["rpc"], "rpc")
    if not data.get("seeds"):
        raise ConfigError(f"node_id {node_id!r} is not among [[nodes]]: it needs seeds to join")
    return NodeSpec(node_id, data["zone"], http_host, http_port, rpc_host, rpc_port)
