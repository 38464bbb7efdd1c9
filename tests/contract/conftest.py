"""What every storage contract suite shares: the engines, and a fresh store of each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.storage import Storage, open_storage

ENGINES = ["memory", "rocksdb"]
# Keys past 8 bytes of 0xff probe the end of the last partition's range.
EDGE_KEYS = [b"", b"\x00", b"a", b"a\x00", b"b", b"\xff", b"\xff" * 20, b"\x00" * 300]
EDGE_PARTITIONS = [0, 1, 2, 65533, 65534, 65535]


@pytest.fixture(params=ENGINES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    engine = open_storage(request.param, tmp_path / "db")
    yield engine
    engine.close()
