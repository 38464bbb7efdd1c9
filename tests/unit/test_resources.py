"""node.resources: the open-file limit at start-up and the connection caps that fit it."""

from __future__ import annotations

import dataclasses
import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynakv.config import Limits
from dynakv.node import resources
from dynakv.node.resources import (
    OPEN_FILES_MIN,
    OTHER_FILES_SLACK_MAX,
    STORAGE_FILES_RESERVE_MAX,
    connection_files_budget,
    fit_connection_caps,
    other_files_slack,
    raise_open_file_limit,
    storage_files_reserve,
)

ROOT = Path(__file__).resolve().parents[2]

# --- fit_connection_caps ---------------------------------------------------------------------


@given(
    open_files=st.integers(OPEN_FILES_MIN, 10_000_000),
    http_max=st.integers(1, 1_000_000),
    rpc_max=st.integers(1, 1_000_000),
)
def test_caps_plus_reserve_plus_slack_never_exceed_the_limit(
    open_files: int, http_max: int, rpc_max: int
) -> None:
    limits = Limits(http_connections_max=http_max, rpc_connections_max=rpc_max)
    fitted = fit_connection_caps(limits, open_files)
    http, rpc = fitted.http_connections_max, fitted.rpc_connections_max
    assert 1 <= http <= http_max and 1 <= rpc <= rpc_max
    reserve, slack = storage_files_reserve(open_files), other_files_slack(open_files)
    assert http + rpc + reserve + slack <= open_files
    assert reserve <= STORAGE_FILES_RESERVE_MAX and slack <= OTHER_FILES_SLACK_MAX
    budget = connection_files_budget(open_files)
    if http_max + rpc_max <= budget:
        assert fitted == limits  # what fits is kept as configured
    else:
        assert http + rpc == budget  # what is lowered uses the whole budget
    assert dataclasses.replace(
        fitted, http_connections_max=http_max, rpc_connections_max=rpc_max
    ) == (limits)  # nothing else changes


@pytest.mark.parametrize(
    ("open_files", "http", "rpc"),
    [
        (1_048_576, 4096, 1024),  # the defaults fit
        (65_536, 4096, 1024),
        (4096, 2253, 563),  # the module docstring's examples
        (1024, 205, 51),
        (256, 52, 12),
        (4, 1, 1),  # below OPEN_FILES_MIN: one of each, no promise
    ],
)
def test_caps_for_the_default_limits(open_files: int, http: int, rpc: int) -> None:
    fitted = fit_connection_caps(Limits(), open_files)
    assert (fitted.http_connections_max, fitted.rpc_connections_max) == (http, rpc)


def test_the_reserve_is_1024_or_half_the_limit_and_the_slack_256_or_a_quarter() -> None:
    assert (storage_files_reserve(1_048_576), other_files_slack(1_048_576)) == (1024, 256)
    assert (storage_files_reserve(1000), other_files_slack(1000)) == (500, 250)
    assert connection_files_budget(1000) == 250


# --- raise_open_file_limit -------------------------------------------------------------------


class FakeLimits:
    """RLIMIT_NOFILE as a fake ``resource`` module sees it; ``refuse`` lists targets it rejects."""

    def __init__(self, soft: int, hard: int, refuse: tuple[int, ...] = ()) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse
        self.attempts: list[int] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE and limits[1] == self.hard
        self.attempts.append(limits[0])
        if limits[0] in self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.soft = limits[0]


@pytest.fixture
def fake_limits(monkeypatch: pytest.MonkeyPatch) -> FakeLimits:
    fake = FakeLimits(1024, 65_536)
    monkeypatch.setattr(resources.resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(resources.resource, "setrlimit", fake.setrlimit)
    return fake


def test_the_soft_limit_is_raised_to_the_hard_limit(fake_limits: FakeLimits) -> None:
    assert raise_open_file_limit() == (1024, 65_536)
    assert fake_limits.soft == 65_536


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone(fake_limits: FakeLimits) -> None:
    fake_limits.soft = fake_limits.hard
    assert raise_open_file_limit() == (65_536, 65_536)
    assert fake_limits.attempts == []


def test_a_refused_raise_is_logged_and_the_old_limit_kept(
    fake_limits: FakeLimits, caplog: pytest.LogCaptureFixture
) -> None:
    fake_limits.refuse = (65_536,)
    with caplog.at_level(logging.WARNING, logger="dynakv.node.resources"):
        assert raise_open_file_limit() == (1024, 1024)
    assert fake_limits.soft == 1024
    assert any(
        "not raised" in r.getMessage() and "soft=1024" in r.getMessage() for r in caplog.records
    )


def test_an_unlimited_hard_limit_is_approached_in_steps(fake_limits: FakeLimits) -> None:
    fake_limits.hard = resource.RLIM_INFINITY
    fake_limits.refuse = (1_048_576,)  # as macOS refuses anything past OPEN_MAX
    assert raise_open_file_limit() == (1024, 10_240)
    assert fake_limits.attempts == [1_048_576, 10_240]


def test_an_unlimited_soft_limit_is_reported_as_a_number(fake_limits: FakeLimits) -> None:
    fake_limits.soft = fake_limits.hard = resource.RLIM_INFINITY
    assert raise_open_file_limit() == (1_048_576, 1_048_576)
    assert fake_limits.attempts == []


def test_the_real_limit_is_raised_in_a_child_process() -> None:
    script = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'src')!r})\n"
        "from dynakv.node.resources import raise_open_file_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(*raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    before, after, soft, hard = (int(word) for word in result.stdout.split())
    assert before == 256
    assert after == soft
    assert hard in (soft, resource.RLIM_INFINITY)
