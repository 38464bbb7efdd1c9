"""`dynakv get --show-context` on a real server: the value and the context never share a line.

The server is ``test_http_api``'s HttpServer on a fake backend in a thread;
the command runs under click's CliRunner, whose ``output`` interleaves
standard output and standard error the way one terminal shows them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from dynakv.cli import _write_value, main
from dynakv.client import Client
from dynakv.core.record import decode_context
from tests.unit.test_http_api import FakeBackend, ServerThread


@pytest.fixture
def endpoint() -> Iterator[str]:
    with ServerThread(FakeBackend()) as running:
        yield f"127.0.0.1:{running.port}"


def dynakv(endpoint: str, *args: str, value: bytes | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--endpoints", endpoint], input=value)


def stored_context(endpoint: str, key: str) -> str:
    with Client([endpoint]) as client:
        item = client.get(key.encode())
    return str(item.context)


@pytest.mark.parametrize("value", [b"no newline", b"ends in one\n", b"two\nlines", b"\x00\xff"])
def test_the_context_line_comes_first_and_the_value_keeps_its_bytes(
    endpoint: str, value: bytes
) -> None:
    assert dynakv(endpoint, "put", "k", value=value).exit_code == 0
    context = stored_context(endpoint, "k")
    result = dynakv(endpoint, "get", "k", "--show-context")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == value  # scripts get the value exactly
    assert result.stderr == f"context: {context}\n"
    # as one terminal shows both streams: the context has a line of its own
    assert result.output_bytes == f"context: {context}\n".encode() + value
    assert decode_context(context).clock  # the token is a real context


def test_without_the_flag_standard_error_stays_empty(endpoint: str) -> None:
    assert dynakv(endpoint, "put", "k", "v").exit_code == 0
    result = dynakv(endpoint, "get", "k")
    assert (result.exit_code, result.stdout_bytes, result.stderr_bytes) == (0, b"v", b"")


def test_a_missing_key_prints_its_context_then_not_found(endpoint: str) -> None:
    result = dynakv(endpoint, "get", "absent", "--show-context")
    assert result.exit_code == 3
    assert result.stdout_bytes == b""
    assert result.stderr.splitlines() == [
        f"context: {stored_context(endpoint, 'absent')}",
        "not found",
    ]


def test_siblings_come_after_the_context_one_per_line(endpoint: str) -> None:
    for value in ("left", "right"):  # no context: concurrent writes, two siblings
        assert dynakv(endpoint, "put", "s", value).exit_code == 0
    result = dynakv(endpoint, "get", "s", "--show-context")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"context: {stored_context(endpoint, 's')}"
    assert sorted(json.loads(line) for line in lines[1:]) == ["left", "right"]


@pytest.mark.parametrize(
    ("value", "terminal", "written"),
    [
        (b"v", True, b"v\n"),
        (b"v\n", True, b"v\n"),
        (b"", True, b"\n"),
        (b"v", False, b"v"),
        (b"v\n", False, b"v\n"),
    ],
)
def test_a_terminal_gets_a_final_newline_once_a_pipe_gets_the_bytes(
    value: bytes, terminal: bool, written: bytes
) -> None:
    out = io.BytesIO()
    _write_value(out, value, terminal=terminal)
    assert out.getvalue() == written
