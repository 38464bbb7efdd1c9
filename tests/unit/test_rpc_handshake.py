"""Only members get in: the RPC handshake, as a pure state machine and over real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

import pytest

from dynakv.config import Limits
from dynakv.core.record import Record, Sibling
from dynakv.errors import PeerUnreachable, RemoteProtocolError
from dynakv.net.codec import WIRE_VERSION, Envelope, encode_frame
from dynakv.net.framed import RateLimitedWarnings
from dynakv.net.handshake import (
    HANDSHAKE_FRAME_BYTES_MIN,
    NONCE_BYTES,
    REASON_BAD_NODE_ID,
    REASON_BAD_PROOF,
    REASON_UNEXPECTED,
    REASON_WRONG_PEER,
    Challenge,
    ClientHandshake,
    ClientProof,
    HandshakeDecoder,
    HandshakeMessage,
    HandshakeRefused,
    Hello,
    ServerHandshake,
    ServerProof,
    encode_handshake_frame,
)
from dynakv.net.messages import Message, Ping, Pong, WriteReply, WriteRequest
from tests.unit import test_rpc as rpc_tests
from tests.unit.test_rpc import (
    SECRET,
    SERVER_ID,
    Run,
    client_of,
    eventually,
    prove,
    raw_connection,
    serving,
    until_closed_by_peer,
)

run = rpc_tests.run  # the asyncio and uvloop runners, as a fixture of this module too
OTHER_SECRET = b"not the cluster secret, 32 bytes"
WRITE = WriteRequest(partition=1, key=b"k", record=Record((Sibling(b"v", "x", 1, (), 1, 0),)))


def nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def exchange(client: ClientHandshake, server: ServerHandshake) -> tuple[str | None, str | None]:
    """Run a whole handshake in memory; (what the server learned, what the client learned)."""
    message: HandshakeMessage | None = client.start()
    while message is not None:
        reply = server.receive(message)
        message = client.receive(reply)
    return server.peer_node_id, client.peer_node_id


# -- the pure state machines ---------------------------------------------------


def test_members_learn_each_others_node_id() -> None:
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=nonce(), expected_peer="n2")
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    assert (server.peer_node_id, client.peer_node_id) == (None, None)
    assert exchange(client, server) == ("n1", "n2")


def test_a_different_secret_is_refused_by_the_server_before_it_proves_itself() -> None:
    client = ClientHandshake(secret=OTHER_SECRET, node_id="n1", nonce=nonce())
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    challenge = server.receive(client.start())
    proof = client.receive(challenge)
    assert isinstance(proof, ClientProof)
    with pytest.raises(HandshakeRefused) as caught:
        server.receive(proof)
    assert caught.value.reason == REASON_BAD_PROOF
    assert server.peer_node_id is None
    with pytest.raises(HandshakeRefused):  # it stays failed
        server.receive(proof)


@pytest.mark.parametrize(
    ("client_secret", "server_secret", "server_accepts"),
    [
        (OTHER_SECRET, SECRET, (OTHER_SECRET,)),  # a node already on the new secret
        (SECRET, OTHER_SECRET, (SECRET,)),  # a node still on the old one
    ],
)
def test_during_a_rotation_either_secret_gets_in_and_the_server_answers_in_kind(
    client_secret: bytes, server_secret: bytes, server_accepts: tuple[bytes, ...]
) -> None:
    client = ClientHandshake(secret=client_secret, node_id="n1", nonce=nonce())
    server = ServerHandshake(
        secret=server_secret, node_id="n2", nonce=nonce(), accepted=server_accepts
    )
    assert exchange(client, server) == ("n1", "n2")
    # Once the old secret is dropped, a node still proving it is refused.
    stale = ClientHandshake(secret=client_secret, node_id="n1", nonce=nonce())
    strict = ServerHandshake(secret=server_secret, node_id="n2", nonce=nonce())
    with pytest.raises(HandshakeRefused):
        exchange(stale, strict)


def test_the_client_refuses_a_server_proof_it_cannot_verify() -> None:
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=nonce())
    impostor = ServerHandshake(secret=OTHER_SECRET, node_id="n2", nonce=nonce())
    proof = client.receive(impostor.receive(client.start()))
    assert isinstance(proof, ClientProof)
    with pytest.raises(HandshakeRefused) as caught:
        client.receive(ServerProof(proof=os.urandom(32)))
    assert caught.value.reason == REASON_BAD_PROOF
    assert client.peer_node_id is None


def test_a_proof_does_not_fit_another_connection_or_the_other_direction() -> None:
    client_nonce = nonce()
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=client_nonce)
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    hello = client.start()
    client_proof = client.receive(server.receive(hello))
    server_proof = server.receive(client_proof)  # type: ignore[arg-type]
    assert isinstance(client_proof, ClientProof) and isinstance(server_proof, ServerProof)
    # Replayed to a fresh connection (a new server nonce): refused.
    replayed = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    replayed.receive(hello)
    with pytest.raises(HandshakeRefused, match=REASON_BAD_PROOF):
        replayed.receive(client_proof)
    # The server's proof, offered as a client's on the very same nonces: refused.
    server_nonce = nonce()
    twin = ServerHandshake(secret=SECRET, node_id="n2", nonce=server_nonce)
    twin_client = ClientHandshake(secret=SECRET, node_id="n1", nonce=client_nonce)
    twin_client.receive(twin.receive(twin_client.start()))
    reference = ServerHandshake(secret=SECRET, node_id="n2", nonce=server_nonce)
    reference.receive(Hello(node_id="n1", nonce=client_nonce))
    reference_server_proof = reference.receive(
        ClientProof(proof=_client_proof(client_nonce, server_nonce))
    )
    with pytest.raises(HandshakeRefused, match=REASON_BAD_PROOF):
        twin.receive(ClientProof(proof=reference_server_proof.proof))  # type: ignore[union-attr]


def _client_proof(client_nonce: bytes, server_nonce: bytes) -> bytes:
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=client_nonce)
    client.start()
    proof = client.receive(Challenge(node_id="n2", nonce=server_nonce))
    assert isinstance(proof, ClientProof)
    return proof.proof


def test_node_ids_are_bound_into_the_proofs() -> None:
    # An attacker on the path renames the server in the challenge: the server
    # then finds the client's proof wrong, as it covers the name the client saw.
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=nonce())
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    challenge = server.receive(client.start())
    assert isinstance(challenge, Challenge)
    proof = client.receive(Challenge(node_id="n3", nonce=challenge.nonce))
    with pytest.raises(HandshakeRefused, match=REASON_BAD_PROOF):
        server.receive(proof)  # type: ignore[arg-type]


def test_the_client_refuses_a_server_that_is_not_the_node_it_meant() -> None:
    client = ClientHandshake(secret=SECRET, node_id="n1", nonce=nonce(), expected_peer="n3")
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    with pytest.raises(HandshakeRefused) as caught:
        exchange(client, server)
    assert caught.value.reason == REASON_WRONG_PEER


@pytest.mark.parametrize(
    "messages",
    [
        [ClientProof(proof=b"p" * 32)],  # a proof before hello
        [Hello(node_id="n1", nonce=b"a" * 32), Hello(node_id="n1", nonce=b"a" * 32)],
        [Challenge(node_id="n1", nonce=b"a" * 32)],  # the server's message, sent to a server
        [ServerProof(proof=b"p" * 32)],
    ],
)
def test_the_server_refuses_messages_out_of_order(messages: list[HandshakeMessage]) -> None:
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=nonce())
    with pytest.raises(HandshakeRefused, match=REASON_UNEXPECTED):
        for message in messages:
            server.receive(message)
    assert server.peer_node_id is None


def test_the_server_refuses_a_client_claiming_its_own_id_or_echoing_its_nonce() -> None:
    server_nonce = nonce()
    server = ServerHandshake(secret=SECRET, node_id="n2", nonce=server_nonce)
    with pytest.raises(HandshakeRefused, match=REASON_BAD_NODE_ID):
        server.receive(Hello(node_id="n2", nonce=nonce()))
    echo = ServerHandshake(secret=SECRET, node_id="n2", nonce=server_nonce)
    with pytest.raises(HandshakeRefused, match=REASON_UNEXPECTED):
        echo.receive(Hello(node_id="n1", nonce=server_nonce))


def test_short_secrets_are_a_programmer_error() -> None:
    with pytest.raises(AssertionError, match="at least 16 bytes"):
        ServerHandshake(secret=b"short", node_id="n2", nonce=nonce())


def test_handshake_frames_round_trip_and_fit_the_small_cap() -> None:
    messages: list[HandshakeMessage] = [
        Hello(node_id="n" * 128, nonce=nonce()),
        Challenge(node_id="n" * 128, nonce=nonce()),
        ClientProof(proof=os.urandom(32)),
        ServerProof(proof=os.urandom(32)),
    ]
    assert Limits().rpc_handshake_frame_bytes_max >= HANDSHAKE_FRAME_BYTES_MIN
    stream = b"".join(
        encode_handshake_frame(message, HANDSHAKE_FRAME_BYTES_MIN) for message in messages
    )
    assert HandshakeDecoder(HANDSHAKE_FRAME_BYTES_MIN).feed(stream) == messages
    with pytest.raises(RemoteProtocolError, match="undecodable"):  # a 31-byte nonce
        HandshakeDecoder(256).feed(
            encode_handshake_frame(Hello(node_id="n1", nonce=b"x" * 31), 256)
        )


def test_rate_limited_warnings_count_what_they_hold_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warnings = RateLimitedWarnings(interval_s=1.0)
    with caplog.at_level(logging.WARNING, logger="dynakv.net.rpc"):
        assert warnings.warning(10.0, "a", "first peer=%s", "p1")
        assert not warnings.warning(10.5, "a", "second peer=%s", "p2")
        assert not warnings.warning(10.9, "a", "third peer=%s", "p3")
        assert warnings.warning(10.9, "b", "other reason peer=%s", "p4")
        assert warnings.warning(11.0, "a", "fourth peer=%s", "p5")
    assert [record.getMessage() for record in caplog.records] == [
        "first peer=p1 suppressed=0",
        "other reason peer=p4 suppressed=0",
        "fourth peer=p5 suppressed=2",
    ]


# -- over real sockets -------------------------------------------------------------


def test_the_handler_learns_the_clients_node_id(run: Run[None]) -> None:
    senders: list[str] = []

    async def record_sender(message: Message, sender: str) -> Message:
        senders.append(sender)
        assert isinstance(message, Ping)
        return Pong(sender=message.sender)

    async def scenario() -> None:
        async with (
            serving(handler_with_sender=record_sender) as server,
            client_of(server.bound_port, node_id="n7", expected_node_id=SERVER_ID) as client,
        ):
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            status = server.status()
            assert (status["connections"], status["authenticated"]) == (1, 1)
            assert status["handshakes_refused_total"] == 0

    senders.clear()
    run(scenario())
    assert senders == ["n7"]


def _recording_handler(handled: list[Message]) -> Any:
    def handler(message: Message, sender: str) -> Message:
        handled.append(message)
        return WriteReply()

    return handler


def test_a_client_with_another_secret_never_gets_a_write_handled(
    run: Run[None], caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[Message] = []

    async def scenario() -> None:
        async with (
            serving(handler_with_sender=_recording_handler(handled)) as server,
            client_of(
                server.bound_port, secret=OTHER_SECRET, reconnect_backoff_ms_max=5000
            ) as client,
        ):
            with pytest.raises(PeerUnreachable) as caught:
                await client.call(WRITE, timeout_ms=1000)
            assert "handshake failed" in str(caught.value)
            assert str(client.last_error).startswith("handshake failed:")
            assert not client.is_up and not client.is_connected
            with pytest.raises(PeerUnreachable, match="backoff"):  # like a failed connect
                await client.call(WRITE, timeout_ms=1000)
            await eventually(lambda: server.status()["handshakes_refused_total"] == 1)
            assert server.connection_count == 0
            for text in (str(client.last_error), repr(client.status())):
                for secret in (SECRET, OTHER_SECRET):
                    assert secret.decode() not in text and secret.hex() not in text

    with caplog.at_level(logging.INFO, logger="dynakv.net.rpc"):
        run(scenario())
    assert handled == []
    assert any("reason=bad_proof" in record.getMessage() for record in caplog.records)


def test_the_client_refuses_a_member_at_the_wrong_address(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving() as server,
            client_of(server.bound_port, expected_node_id="n9") as client,
        ):
            with pytest.raises(PeerUnreachable, match="handshake failed"):
                await client.call(Ping(sender="a"), timeout_ms=1000)
            assert REASON_WRONG_PEER in str(client.last_error)

    run(scenario())


@pytest.mark.parametrize(
    "prelude",
    ["nothing", "hello", "wrong_secret"],
)
def test_a_write_without_a_proven_handshake_is_never_handled(run: Run[None], prelude: str) -> None:
    handled: list[Message] = []

    async def scenario() -> None:
        async with (
            serving(handler_with_sender=_recording_handler(handled)) as server,
            raw_connection(server.bound_port) as (reader, writer),
        ):
            if prelude == "hello":
                writer.write(encode_handshake_frame(Hello(node_id="n1", nonce=nonce()), 256))
            elif prelude == "wrong_secret":
                with pytest.raises((AssertionError, ConnectionError)):
                    await prove(reader, writer, secret=OTHER_SECRET)
            writer.write(encode_frame(Envelope(1, False, WRITE)))
            await until_closed_by_peer(reader)
            await eventually(lambda: server.connection_count == 0)
            assert server.status()["handshakes_refused_total"] == 1

    run(scenario())
    assert handled == []


def test_a_big_frame_before_the_handshake_is_refused_at_its_header(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server, raw_connection(server.bound_port) as (reader, writer):
            writer.write(struct.pack(">IBI", 257, WIRE_VERSION, 0))  # the body never comes
            await until_closed_by_peer(reader)
            await eventually(lambda: server.status()["handshakes_refused_total"] == 1)

    run(scenario())


def test_a_silent_connection_is_closed_at_the_handshake_timeout(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving(handshake_timeout_ms=100) as server,
            raw_connection(server.bound_port) as (reader, _),
        ):
            loop = asyncio.get_running_loop()
            started_s = loop.time()
            await until_closed_by_peer(reader)
            assert 0.09 <= loop.time() - started_s < 2.0
            await eventually(lambda: server.status()["handshakes_refused_total"] == 1)

    run(scenario())


def test_the_client_fails_a_handshake_that_does_not_finish(run: Run[None]) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # hear the hello, never answer, until the client hangs up
        finally:
            writer.close()

    async def scenario() -> None:
        listener = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = int(listener.sockets[0].getsockname()[1])
        try:
            async with client_of(port, connect_timeout_ms=5000, handshake_timeout_ms=100) as client:
                with pytest.raises(PeerUnreachable):  # not delivered: never an RpcTimeout
                    await client.call(Ping(sender="a"), timeout_ms=3000)
                assert str(client.last_error).startswith("handshake failed: timeout")
            async with client_of(port, connect_timeout_ms=100) as client:
                with pytest.raises(PeerUnreachable):
                    await client.call(Ping(sender="a"), timeout_ms=3000)
                assert "handshake failed: unfinished" in str(client.last_error)
            async with client_of(port) as client:  # the call's own timeout, before either
                with pytest.raises(PeerUnreachable, match="unfinished at the call"):
                    await client.call(Ping(sender="a"), timeout_ms=50)
        finally:
            listener.close()
            await listener.wait_closed()

    run(scenario())


def test_the_bad_handshake_log_names_the_peer_and_never_the_secret(
    run: Run[None], caplog: pytest.LogCaptureFixture
) -> None:
    addresses: list[str] = []

    async def scenario() -> None:
        async with serving() as server:
            for _ in range(3):  # one line per second per reason; the rest are counted
                async with raw_connection(server.bound_port) as (reader, writer):
                    host, port = writer.get_extra_info("sockname")[:2]
                    addresses.append(f"{host}:{port}")
                    with pytest.raises((AssertionError, ConnectionError)):
                        await prove(reader, writer, secret=OTHER_SECRET)
                    await until_closed_by_peer(reader)
            await eventually(lambda: server.status()["handshakes_refused_total"] == 3)

    with caplog.at_level(logging.DEBUG, logger="dynakv.net"):
        run(scenario())
    refusals = [r for r in caplog.records if "handshake refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    line = refusals[0].getMessage()
    assert addresses[0] in line and "reason=bad_proof" in line and "suppressed=0" in line
    for secret in (SECRET, OTHER_SECRET):
        assert secret.decode() not in caplog.text and secret.hex() not in caplog.text


def test_an_envelope_during_the_handshake_is_a_bad_frame() -> None:
    decoder = HandshakeDecoder(256)
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        decoder.feed(encode_frame(Envelope(1, False, Ping(sender="x"))))
