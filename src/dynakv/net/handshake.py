"""The RPC handshake: each end proves it holds the cluster secret before any request.

Four frames, in this order, before the first ``Envelope`` on a connection::

    client                                   server
      Hello(client_id, client_nonce)   --->
                                       <---  Challenge(server_id, server_nonce)
      ClientProof(HMAC_client)         --->
                                       <---  ServerProof(HMAC_server)

``HMAC_side = HMAC-SHA256(secret, label_side || client_nonce || server_nonce ||
client_id || server_id)``, each field length-prefixed, with a different label
for each direction (so neither proof can stand in for the other). Both nonces
are fresh random bytes, so a recorded proof never fits another connection.
The server proves itself only after the client has, so a stranger never gets a
proof computed for it; the client sends nothing after its proof until the
server's has arrived, and the server nothing unasked: the frame that ends the
handshake is followed, on each side, only by ``Envelope`` frames.

Invariants:

- A side is authenticated only by a proof that ``hmac.compare_digest`` found
  equal to the one it computed; ``peer_node_id`` is ``None`` until then.
- Any message out of order, a second handshake, or a bad proof raises
  ``HandshakeRefused``, and the state machine stays failed.
- Nonces, proofs and the secret never appear in a message, a log line or an
  error: errors carry a reason from ``REASONS`` and a human sentence.

What it does not do: encrypt, or protect a connection from an attacker on the
path, who could relay a handshake and then read or alter the frames (that
needs TLS). It is pure: no I/O, no clock, and the nonces are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Final

import msgspec

from dynakv.config import SECRET_BYTES_MIN, Limits
from dynakv.errors import RemoteProtocolError
from dynakv.net.codec import PayloadFrameDecoder, encode_payload_frame

NONCE_BYTES: Final = 32
PROOF_BYTES: Final = 32  # SHA-256
NODE_ID_BYTES_MAX: Final = Limits().node_id_bytes_max

_CLIENT_LABEL: Final = b"dynakv rpc handshake v1: client proof\x00"
_SERVER_LABEL: Final = b"dynakv rpc handshake v1: server proof\x00"

# Why a handshake failed; the keys of rate-limited log lines, so a fixed set.
REASON_BAD_FRAME: Final = "bad_frame"  # oversized, bad checksum, undecodable
REASON_UNEXPECTED: Final = "unexpected_message"  # out of order, or early bytes
REASON_BAD_NODE_ID: Final = "bad_node_id"
REASON_WRONG_PEER: Final = "wrong_peer"  # the client reached another node than it meant to
REASON_BAD_PROOF: Final = "bad_proof"  # most likely a different cluster secret
REASON_TIMEOUT: Final = "timeout"
REASON_CLOSED: Final = "closed"  # the other side hung up before the end
REASONS: Final = frozenset(
    {
        REASON_BAD_FRAME,
        REASON_UNEXPECTED,
        REASON_BAD_NODE_ID,
        REASON_WRONG_PEER,
        REASON_BAD_PROOF,
        REASON_TIMEOUT,
        REASON_CLOSED,
    }
)

Nonce = Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Proof = Annotated[bytes, msgspec.Meta(min_length=PROOF_BYTES, max_length=PROOF_BYTES)]
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=NODE_ID_BYTES_MAX)]


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="hello"):
    node_id: NodeId
    nonce: Nonce


class Challenge(msgspec.Struct, frozen=True, array_like=True, tag="challenge"):
    node_id: NodeId
    nonce: Nonce


class ClientProof(msgspec.Struct, frozen=True, array_like=True, tag="client_proof"):
    proof: Proof


class ServerProof(msgspec.Struct, frozen=True, array_like=True, tag="server_proof"):
    proof: Proof


HandshakeMessage = Hello | Challenge | ClientProof | ServerProof

_decoder: Final = msgspec.msgpack.Decoder(HandshakeMessage)

# The smallest ``handshake_frame_bytes_max`` that lets every node id through:
# the largest handshake frame (a challenge naming a 128-byte node id), less its
# 4-byte length prefix.
HANDSHAKE_FRAME_BYTES_MIN: Final = (
    len(
        encode_payload_frame(
            Challenge(node_id="n" * NODE_ID_BYTES_MAX, nonce=bytes(NONCE_BYTES)), None
        )
    )
    - 4
)


class HandshakeRefused(RemoteProtocolError):
    """The other side did not prove membership; ``reason`` is one of ``REASONS``."""

    code = "HandshakeRefused"

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}", reason=reason)
        self.reason = reason
        self.detail = detail


class HandshakeDecoder(PayloadFrameDecoder[HandshakeMessage]):
    """Frames of handshake messages, each at most ``frame_bytes_max`` (small)."""

    __slots__ = ()

    def __init__(self, frame_bytes_max: int) -> None:
        super().__init__(frame_bytes_max, _decoder)


def encode_handshake_frame(message: HandshakeMessage, frame_bytes_max: int) -> bytes:
    """The frame for ``message``; ``LocalProtocolError`` if the peer would refuse its size."""
    return encode_payload_frame(message, frame_bytes_max)


def check_secret(secret: bytes) -> None:
    assert isinstance(secret, bytes) and len(secret) >= SECRET_BYTES_MIN, (
        f"the cluster secret must be at least {SECRET_BYTES_MIN} bytes"
    )


def check_node_id(node_id: str) -> None:
    assert 0 < len(node_id.encode()) <= NODE_ID_BYTES_MAX, "node id must be 1..128 bytes"


def _proof(
    secret: bytes,
    label: bytes,
    client_nonce: bytes,
    server_nonce: bytes,
    client_id: str,
    server_id: str,
) -> bytes:
    mac = hmac.new(secret, label, hashlib.sha256)
    for field in (client_nonce, server_nonce, client_id.encode(), server_id.encode()):
        mac.update(len(field).to_bytes(4, "big"))
        mac.update(field)
    digest = mac.digest()
    assert len(digest) == PROOF_BYTES
    return digest


class ServerHandshake:
    """The server's side: ``receive`` each client message, send back what it returns.

    ``accepted`` are further secrets a client may prove (a secret being rotated
    in or out); the server proves itself with whichever secret the client used.
    """

    __slots__ = (
        "_accepted",
        "_client_id",
        "_client_nonce",
        "_node_id",
        "_nonce",
        "_secret",
        "_state",
    )

    def __init__(
        self, *, secret: bytes, node_id: str, nonce: bytes, accepted: tuple[bytes, ...] = ()
    ) -> None:
        check_secret(secret)
        for other in accepted:
            check_secret(other)
        check_node_id(node_id)
        assert len(nonce) == NONCE_BYTES
        self._secret = secret
        self._accepted = accepted
        self._node_id = node_id
        self._nonce = nonce
        self._state = "await_hello"
        self._client_id = ""
        self._client_nonce = b""

    @property
    def peer_node_id(self) -> str | None:
        """The client's node id once it has proven the secret, else None."""
        return self._client_id if self._state == "done" else None

    def receive(self, message: HandshakeMessage) -> HandshakeMessage:
        """The reply to ``message``; raises ``HandshakeRefused`` on anything wrong."""
        state, self._state = self._state, "failed"  # until this message proves good
        if state == "await_hello" and isinstance(message, Hello):
            if len(message.node_id.encode()) > NODE_ID_BYTES_MAX:
                raise HandshakeRefused(REASON_BAD_NODE_ID, "node id too long")
            if message.node_id == self._node_id:
                raise HandshakeRefused(REASON_BAD_NODE_ID, "client claims this node's own id")
            if hmac.compare_digest(message.nonce, self._nonce):
                raise HandshakeRefused(REASON_UNEXPECTED, "client echoed the server's nonce")
            self._client_id, self._client_nonce = message.node_id, message.nonce
            self._state = "await_proof"
            return Challenge(node_id=self._node_id, nonce=self._nonce)
        if state == "await_proof" and isinstance(message, ClientProof):
            # Every candidate is compared (no early exit), so timing does not tell
            # which secret matched.
            matched: bytes | None = None
            for secret in (self._secret, *self._accepted):
                if hmac.compare_digest(self._expected(secret, _CLIENT_LABEL), message.proof):
                    matched = matched or secret
            if matched is None:
                raise HandshakeRefused(
                    REASON_BAD_PROOF,
                    f"client {self._client_id!r} failed to prove the cluster secret",
                )
            self._state = "done"
            return ServerProof(proof=self._expected(matched, _SERVER_LABEL))
        raise HandshakeRefused(
            REASON_UNEXPECTED, f"{type(message).__name__} while the server is in {state}"
        )

    def _expected(self, secret: bytes, label: bytes) -> bytes:
        return _proof(
            secret, label, self._client_nonce, self._nonce, self._client_id, self._node_id
        )


class ClientHandshake:
    """The client's side: send ``start()``, then ``receive`` each server message and
    send back what it returns; None means the server is proven (``peer_node_id``)."""

    __slots__ = (
        "_expected_peer",
        "_node_id",
        "_nonce",
        "_secret",
        "_server_id",
        "_server_nonce",
        "_state",
    )

    def __init__(
        self, *, secret: bytes, node_id: str, nonce: bytes, expected_peer: str | None = None
    ) -> None:
        check_secret(secret)
        check_node_id(node_id)
        assert len(nonce) == NONCE_BYTES
        self._secret = secret
        self._node_id = node_id
        self._nonce = nonce
        self._expected_peer = expected_peer
        self._state = "new"
        self._server_id = ""
        self._server_nonce = b""

    @property
    def peer_node_id(self) -> str | None:
        """The server's node id once it has proven the secret, else None."""
        return self._server_id if self._state == "done" else None

    @property
    def proof_sent(self) -> bool:
        """Our proof went out and the server's has not come (a hang-up now is telling)."""
        return self._state == "await_proof"

    def start(self) -> Hello:
        assert self._state == "new", self._state
        self._state = "await_challenge"
        return Hello(node_id=self._node_id, nonce=self._nonce)

    def receive(self, message: HandshakeMessage) -> HandshakeMessage | None:
        """The reply to ``message`` (None once done); ``HandshakeRefused`` if wrong."""
        state, self._state = self._state, "failed"
        if state == "await_challenge" and isinstance(message, Challenge):
            if self._expected_peer is not None and message.node_id != self._expected_peer:
                raise HandshakeRefused(
                    REASON_WRONG_PEER,
                    f"reached node {message.node_id!r}, expected {self._expected_peer!r}",
                )
            if hmac.compare_digest(message.nonce, self._nonce):
                raise HandshakeRefused(REASON_UNEXPECTED, "server echoed the client's nonce")
            self._server_id, self._server_nonce = message.node_id, message.nonce
            self._state = "await_proof"
            return ClientProof(proof=self._expected(_CLIENT_LABEL))
        if state == "await_proof" and isinstance(message, ServerProof):
            if not hmac.compare_digest(self._expected(_SERVER_LABEL), message.proof):
                raise HandshakeRefused(
                    REASON_BAD_PROOF,
                    f"server {self._server_id!r} failed to prove the cluster secret",
                )
            self._state = "done"
            return None
        raise HandshakeRefused(
            REASON_UNEXPECTED, f"{type(message).__name__} while the client is in {state}"
        )

    def _expected(self, label: bytes) -> bytes:
        return _proof(
            self._secret, label, self._nonce, self._server_nonce, self._node_id, self._server_id
        )
