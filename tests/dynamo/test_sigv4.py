"""SigV4: requests botocore signs verify; tampered, unknown, stale or unsigned ones do not."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dynakv.dynamo.errors import (
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)
from dynakv.dynamo.sigv4 import (
    HEADER_NAMES,
    credentials_from_environment,
    load_credentials,
    verify,
)

KEYS = {"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
BODY = b'{"TableName": "users"}'


def signed(
    access_key: str = "AKIDEXAMPLE", secret: str = KEYS["AKIDEXAMPLE"], body: bytes = BODY
) -> tuple[dict[bytes, bytes], int]:
    """Headers as the connection keeps them, for a request botocore signed; and its time."""
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:8001/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.DescribeTable",
        },
    )
    SigV4Auth(Credentials(access_key, secret), "dynamodb", "us-east-1").add_auth(request)
    headers = {name.lower().encode(): value.encode() for name, value in request.headers.items()}
    headers[b"host"] = b"127.0.0.1:8001"
    headers = {name: value for name, value in headers.items() if name in HEADER_NAMES}
    when = datetime.datetime.strptime(headers[b"x-amz-date"].decode(), "%Y%m%dT%H%M%SZ")
    now_ms = int(when.replace(tzinfo=datetime.UTC).timestamp() * 1000)
    return headers, now_ms


def test_a_botocore_signature_verifies() -> None:
    headers, now_ms = signed()
    verify(b"POST", b"/", headers, BODY, KEYS, now_ms)
    verify(b"POST", b"/", headers, BODY, KEYS, now_ms + 14 * 60 * 1000)


def test_without_keys_everything_is_accepted() -> None:
    verify(b"POST", b"/", {}, BODY, None, 0)
    headers, _ = signed(secret="anything")
    verify(b"POST", b"/", headers, BODY, None, 0)


def test_a_changed_body_target_or_secret_fails() -> None:
    headers, now_ms = signed()
    with pytest.raises(InvalidSignatureException, match="signature we calculated does not match"):
        verify(b"POST", b"/", headers, BODY + b" ", KEYS, now_ms)
    tampered = headers | {b"x-amz-target": b"DynamoDB_20120810.DeleteTable"}
    with pytest.raises(InvalidSignatureException):
        verify(b"POST", b"/", tampered, BODY, KEYS, now_ms)
    wrong, now_ms = signed(secret="not-the-secret")
    with pytest.raises(InvalidSignatureException):
        verify(b"POST", b"/", wrong, BODY, KEYS, now_ms)


def test_unknown_keys_stale_dates_and_missing_headers_fail() -> None:
    headers, now_ms = signed(access_key="AKIDOTHER")
    with pytest.raises(UnrecognizedClientException, match="security token"):
        verify(b"POST", b"/", headers, BODY, KEYS, now_ms)
    headers, now_ms = signed()
    with pytest.raises(InvalidSignatureException, match="Signature expired"):
        verify(b"POST", b"/", headers, BODY, KEYS, now_ms + 16 * 60 * 1000)
    with pytest.raises(MissingAuthenticationTokenException):
        verify(b"POST", b"/", {}, BODY, KEYS, now_ms)
    without_date = {name: value for name, value in headers.items() if name != b"x-amz-date"}
    with pytest.raises(InvalidSignatureException):
        verify(b"POST", b"/", without_date, BODY, KEYS, now_ms)
    garbled = headers | {b"authorization": b"AWS4-HMAC-SHA256 Credential=x"}
    with pytest.raises(InvalidSignatureException, match="requires 'Credential'"):
        verify(b"POST", b"/", garbled, BODY, KEYS, now_ms)


def test_a_signed_header_the_server_does_not_keep_is_named() -> None:
    headers, now_ms = signed()
    authorization = headers[b"authorization"].replace(b"SignedHeaders=", b"SignedHeaders=x-odd;")
    with pytest.raises(InvalidSignatureException, match="x-odd"):
        verify(b"POST", b"/", headers | {b"authorization": authorization}, BODY, KEYS, now_ms)


def test_credentials_come_from_the_file_the_environment_names(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# access keys\nAKID1 secret1\nAKID2:secret2\n")
    assert load_credentials(path) == {"AKID1": "secret1", "AKID2": "secret2"}
    env = {"DYNAKV_DYNAMODB_CREDENTIALS_FILE": str(path)}
    assert credentials_from_environment(env) == load_credentials(path)
    assert credentials_from_environment({}) is None
    path.write_text("AKID1\n")
    with pytest.raises(ValueError, match="expected 'ACCESS_KEY_ID SECRET_ACCESS_KEY'"):
        load_credentials(path)
