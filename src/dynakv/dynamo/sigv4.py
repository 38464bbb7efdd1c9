"""AWS Signature Version 4 on DynamoDB requests: accepted as sent, or verified against keys.

With no credentials configured (the default, as DynamoDB Local does) every
request is accepted, signed or not, whatever its access key. With
credentials (access key id -> secret access key; ``load_credentials``),
each request must carry an ``Authorization: AWS4-HMAC-SHA256 ...`` header
whose access key is configured and whose signature verifies over the
canonical request (method, path, query, the signed headers, the payload
hash), and whose ``X-Amz-Date`` is within ``CLOCK_SKEW_MS_MAX`` of ours.
Only headers in ``HEADER_NAMES`` are kept by the connection, so a request
that signs another header cannot be verified and is refused, naming it.

Pure but for ``load_credentials``, which reads the one file it is given;
``now_ms`` is an argument. Secrets never appear in a message.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, quote

from dynakv.dynamo.errors import (
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

ALGORITHM: Final = "AWS4-HMAC-SHA256"
CLOCK_SKEW_MS_MAX: Final = 15 * 60 * 1000
CREDENTIALS_FILE_ENV: Final = "DYNAKV_DYNAMODB_CREDENTIALS_FILE"
CREDENTIALS_MAX: Final = 1024
HEADER_NAMES: Final = frozenset(
    {
        b"authorization",
        b"host",
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"accept-encoding",
        b"x-amz-date",
        b"x-amz-target",
        b"x-amz-content-sha256",
        b"x-amz-security-token",
        b"x-amz-user-agent",
        b"x-amz-api-version",
        b"amz-sdk-invocation-id",
        b"amz-sdk-request",
    }
)
_SIGNED_HEADERS_MAX: Final = 32


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key: str
    scope: str  # date/region/service/aws4_request
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(raw: bytes) -> Authorization:
    text = raw.decode("latin-1").strip()
    algorithm, _, rest = text.partition(" ")
    if algorithm != ALGORITHM:
        raise InvalidSignatureException(f"Authorization header must use {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    credential = fields.get("Credential", "")
    access_key, _, scope = credential.partition("/")
    signed = tuple(fields.get("SignedHeaders", "").split(";"))
    signature = fields.get("Signature", "")
    if not access_key or scope.count("/") != 3 or not signature or not signed[0]:
        raise InvalidSignatureException(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"parameters (got {', '.join(sorted(fields))[:200]})"
        )
    if len(signed) > _SIGNED_HEADERS_MAX:
        raise InvalidSignatureException(f"more than {_SIGNED_HEADERS_MAX} signed headers")
    return Authorization(access_key, scope, signed, signature)


def _canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _canonical_headers(headers: Mapping[bytes, bytes], signed: tuple[str, ...]) -> str:
    lines = []
    for name in signed:
        value = headers.get(name.encode("latin-1"))
        if value is None:
            raise InvalidSignatureException(
                f"the request signs the header {name[:64]!r}, which was not sent or which "
                "dynakv does not read"
            )
        lines.append(f"{name}:{' '.join(value.decode('latin-1').split())}\n")
    return "".join(lines)


def _signing_key(secret: str, scope: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _check_date(amz_date: str, now_ms: int) -> None:
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise InvalidSignatureException(
            f"X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z'; got {amz_date[:32]!r}"
        ) from None
    offset_ms = abs(int(when.timestamp() * 1000) - now_ms)
    if offset_ms > CLOCK_SKEW_MS_MAX:
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is more than 15 minutes away from the server's time"
        )


def verify(
    method: bytes,
    url: bytes,
    headers: Mapping[bytes, bytes],
    body: bytes,
    credentials: Mapping[str, str] | None,
    now_ms: int,
) -> None:
    """Refuse the request unless it is signed by a configured key (no keys: accept all)."""
    if credentials is None:
        return
    raw = headers.get(b"authorization")
    if raw is None:
        raise MissingAuthenticationTokenException("Request is missing Authentication Token")
    authorization = parse_authorization(raw)
    secret = credentials.get(authorization.access_key)
    if secret is None:
        raise UnrecognizedClientException("The security token included in the request is invalid.")
    amz_date = headers.get(b"x-amz-date", b"").decode("latin-1")
    _check_date(amz_date, now_ms)
    path, _, query = url.decode("latin-1").partition("?")
    payload_hash = headers.get(b"x-amz-content-sha256", b"").decode("latin-1")
    canonical = "\n".join(
        (
            method.decode("latin-1"),
            path or "/",
            _canonical_query(query),
            _canonical_headers(headers, authorization.signed_headers),
            ";".join(authorization.signed_headers),
            payload_hash or hashlib.sha256(body).hexdigest(),
        )
    )
    to_sign = "\n".join(
        (ALGORITHM, amz_date, authorization.scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    key = _signing_key(secret, authorization.scope)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, authorization.signature):
        raise InvalidSignatureException(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details."
        )


def load_credentials(path: Path) -> dict[str, str]:
    """Access keys from a file of ``ACCESS_KEY_ID SECRET_ACCESS_KEY`` lines (``#`` comments)."""
    credentials: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.replace(":", " ").split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'ACCESS_KEY_ID SECRET_ACCESS_KEY'")
        if len(credentials) >= CREDENTIALS_MAX:
            raise ValueError(f"{path}: more than {CREDENTIALS_MAX} access keys")
        credentials[parts[0]] = parts[1]
    if not credentials:
        raise ValueError(f"{path}: no access keys")
    return credentials


def credentials_from_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The keys in the file named by ``$DYNAKV_DYNAMODB_CREDENTIALS_FILE``; None when unset."""
    name = environ.get(CREDENTIALS_FILE_ENV)
    if not name:
        return None
    return load_credentials(Path(name))
