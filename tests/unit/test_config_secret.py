"""Where the cluster secret comes from, what a bad one gets, and that it is never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynakv.config import ConfigError, generate_secret_file, load_node_config

CONFIG = """
node_id = "n1"
{secret_line}

[[nodes]]
id = "n1"
zone = "z1"
http = "127.0.0.1:8001"
rpc = "127.0.0.1:9001"
"""
SECRET = "0123456789abcdef0123456789abcdef"


def write_config(tmp_path: Path, secret_line: str = 'cluster_secret_file = "secret"') -> Path:
    path = tmp_path / "node.toml"
    path.write_text(CONFIG.format(secret_line=secret_line))
    return path


def test_the_secret_comes_from_the_file_named_in_the_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(f"  {SECRET}\n")
    config = load_node_config(write_config(tmp_path), environ={})
    assert config.cluster_secret == SECRET.encode()
    assert config.cluster_secrets_accepted == ()
    assert SECRET not in repr(config)


def test_further_lines_are_accepted_secrets_for_a_rotation(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(f"{SECRET}\n\nnext-secret-0123456789\n")
    config = load_node_config(write_config(tmp_path), environ={})
    assert config.cluster_secret == SECRET.encode()
    assert config.cluster_secrets_accepted == (b"next-secret-0123456789",)
    assert "next-secret" not in repr(config)


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    other = tmp_path / "other"
    other.write_text("from-the-env-file-0123456789")
    config = load_node_config(
        write_config(tmp_path), environ={"DYNAKV_CLUSTER_SECRET_FILE": str(other)}
    )
    assert config.cluster_secret == b"from-the-env-file-0123456789"
    config = load_node_config(
        write_config(tmp_path), environ={"DYNAKV_CLUSTER_SECRET": "inline-secret-0123456789"}
    )
    assert config.cluster_secret == b"inline-secret-0123456789"


@pytest.mark.parametrize(
    ("secret_line", "content", "message"),
    [
        ("", None, "no cluster secret"),
        ('cluster_secret_file = "missing"', None, "cannot read cluster_secret_file"),
        ('cluster_secret_file = "secret"', "short", "at least 16"),
        ('cluster_secret_file = "secret"', "\n\n", "is empty"),
        ('cluster_secret_file = "secret"', f"{SECRET}\nshort", "line 2"),
    ],
)
def test_a_missing_or_weak_secret_stops_the_node_naming_the_cause(
    tmp_path: Path, secret_line: str, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "secret").write_text(content)
    with pytest.raises(ConfigError, match=message) as refused:
        load_node_config(write_config(tmp_path, secret_line), environ={})
    if content:
        assert content.strip() not in str(refused.value) or len(content.strip()) < 6


def test_a_generated_secret_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "cluster.secret"
    generate_secret_file(path)
    first = path.read_text()
    assert len(first.strip()) == 64 and path.stat().st_mode & 0o777 == 0o600
    generate_secret_file(path)  # a restarted dev cluster keeps its secret
    assert path.read_text() == first


def test_a_handshake_frame_cap_too_small_for_a_node_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[limits]\nrpc_handshake_frame_bytes_max = 64\n")
    with pytest.raises(ConfigError, match="rpc_handshake_frame_bytes_max"):
        load_node_config(path, environ={})
