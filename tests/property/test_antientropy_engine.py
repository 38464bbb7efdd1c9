"""The anti-entropy engine against a dumb model: a dict of every replica's records merged.

Random divergent histories (blind and contextual writes, deletes, concurrent
writes that become siblings, records copied to some replicas only) run on
two or three in-process nodes (``tests.unit.test_antientropy_engine``'s
harness). Then:

- one ``repair()`` on one node leaves every replica holding exactly the
  model: each key's records from all replicas, merged; a second repair finds
  every tree in sync and moves nothing;
- so it does with rounds cut short by a tiny ``keys_per_round_max``;
- a tree kept by ``on_write`` through writes, purges, invalidations and
  interleaved incremental builds equals a tree built from a scan.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.antientropy import ExchangeLimits
from dynakv.core.record import ConflictPolicy
from dynakv.core.ring import partition_of
from dynakv.node.antientropy import AntiEntropySettings
from tests.unit.test_antientropy_engine import GRACE_S, PARTITIONS, SMALL, Cluster, keys_of, run

FAST = settings(max_examples=150, deadline=None)
# Few partitions, many keys each: builds take pages, and rounds cut short matter.
KEYS = [key for key in keys_of(400) if partition_of(key, PARTITIONS) in (1, 2, 3)][:24]
NODES = ["a", "b", "c"]

# (node, key, action, copy to): action 0 put blind, 1 put on what it read, 2 delete on
# what it read, 3 blind delete; "copy to" is a bit mask over the other nodes.
operations = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(KEYS),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    max_size=40,
)


def _play(
    cluster: Cluster, node_ids: list[str], history: list[tuple[int, bytes, int, int]]
) -> None:
    for step, (node_index, key, action, copy_mask) in enumerate(history):
        node_id = node_ids[node_index % len(node_ids)]
        others = [n for n in node_ids if n != node_id]
        to = [n for bit, n in enumerate(others) if copy_mask >> bit & 1]
        value = None if action >= 2 else b"v%d-" % step + node_id.encode()
        cluster.write(node_id, key, value, to=to, with_context=action in (1, 2))


@FAST
@given(
    node_count=st.sampled_from([2, 3]),
    policy=st.sampled_from(list(ConflictPolicy)),
    history=operations,
    repairer=st.integers(0, 2),
    keys_per_round_max=st.sampled_from([1, 2, 1000]),
)
def test_one_repair_makes_every_replica_the_merge_of_all(
    node_count: int,
    policy: ConflictPolicy,
    history: list[tuple[int, bytes, int, int]],
    repairer: int,
    keys_per_round_max: int,
) -> None:
    node_ids = NODES[:node_count]
    limits = ExchangeLimits(
        nodes_per_message_max=16, entries_per_message_max=3, keys_per_round_max=keys_per_round_max
    )
    engine_settings = AntiEntropySettings(
        exchange=limits,
        repair_keys_per_message_max=SMALL.repair_keys_per_message_max,
        repair_bytes_per_message_max=SMALL.repair_bytes_per_message_max,
    )
    cluster = Cluster(node_ids, policy=policy, settings=engine_settings)
    _play(cluster, node_ids, history)
    model = cluster.merged()

    engine = cluster[node_ids[repairer % node_count]].engine
    report = run(engine.repair())

    assert report.rounds_failed == 0 and report.totals["refused"] == 0
    for node_id in node_ids:
        assert cluster.content(node_id) == model, node_id
        cluster.assert_trees_fresh(node_id)
    again = run(engine.repair())
    assert again.keys_moved == 0 and again.rounds == ()  # every round in sync


@FAST
@given(
    history=st.lists(
        st.tuples(
            st.sampled_from(["put", "put_on_read", "delete", "purge", "step", "invalidate"]),
            st.sampled_from(KEYS),
        ),
        max_size=80,
    )
)
def test_a_kept_tree_equals_a_fresh_build_whatever_the_writes(
    history: list[tuple[str, bytes]],
) -> None:
    cluster = Cluster(["a", "b"], page_keys=2)
    node = cluster["a"]
    for step, (action, key) in enumerate(history):
        partition = partition_of(key, PARTITIONS)
        if action in ("put", "put_on_read"):
            cluster.write("a", key, b"v%d" % step, with_context=action == "put_on_read")
        elif action == "delete":
            cluster.write("a", key, None, with_context=True)
        elif action == "purge":  # the sweeper's path: the stored bytes it removes
            cluster.clock.now += GRACE_S * 1000 + 1
            old = node.storage.scan_raw(partition, after=None, limit=1 << 20)
            stored = dict(old).get(key)
            if node.storage.purge_if_due(partition, key, cluster.clock.now):
                node.trees.on_write_raw(partition, key, stored, None)
        elif action == "step":  # a page of an incremental build, maybe ending it
            node.trees.build_step(partition)
        else:
            node.trees.invalidate(partition)
    cluster.assert_trees_fresh("a")
    for partition in range(PARTITIONS):  # finish the builds begun, then check them
        if node.trees.is_building(partition):
            for _ in range(100):
                if node.trees.build_step(partition) is not None:
                    break
    cluster.assert_trees_fresh("a")
