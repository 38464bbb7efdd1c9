"""BatchGetItem and BatchWriteItem: read a batch into single-item plans, and render the answer.

A batch is validated whole before anything is read or written (tables
exist, keys match their schemas, at most ``BATCH_GET_KEYS_MAX`` keys or
``BATCH_WRITE_REQUESTS_MAX`` requests, no key twice), so a bad batch stores
nothing. Once valid, each entry runs on its own (``items`` plans, run by the
service); the ones that fail for want of replicas come back in
``UnprocessedKeys`` / ``UnprocessedItems``, in the shape they were sent, so
the SDKs' retry loops send them again. A batch is never answered with an
error for what some of its entries could not do.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.items import ItemRead, ItemWrite, read_delete, read_get, read_put
from dynakv.dynamo.protocol import map_field
from dynakv.dynamo.tables import TableDefinition
from dynakv.dynamo.values import Item, render_item

BATCH_GET_KEYS_MAX: Final = 100
BATCH_WRITE_REQUESTS_MAX: Final = 25
_DUPLICATES: Final = "Provided list of item keys contains duplicates"

FindTable = Callable[[str], TableDefinition]


@dataclass(frozen=True, slots=True)
class GetEntry:
    table_name: str
    read: ItemRead
    key_payload: object


@dataclass(frozen=True, slots=True)
class WriteEntry:
    table_name: str
    write: ItemWrite
    request_payload: object


def _request_items(body: dict[str, Any]) -> dict[str, Any]:
    request_items = map_field(body, "RequestItems", required=True)
    assert request_items is not None
    if not request_items:
        raise ValidationException(
            "1 validation error detected: Value '{}' at 'requestItems' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    return request_items


def read_batch_get(
    body: dict[str, Any], find: FindTable, key_bytes_max: int
) -> tuple[list[GetEntry], dict[str, dict[str, Any]]]:
    """The batch's reads in request order, and each table's parameters other than Keys."""
    entries: list[GetEntry] = []
    parameters: dict[str, dict[str, Any]] = {}
    for name, spec in _request_items(body).items():
        if not isinstance(spec, dict):
            raise ValidationException(f"RequestItems[{name}] must be a map")
        keys = spec.get("Keys")
        if not isinstance(keys, list) or not keys:
            raise ValidationException(
                "1 validation error detected: Value at 'requestItems."
                f"{name}.member.keys' failed to satisfy constraint: Member must have length "
                "greater than or equal to 1"
            )
        table = find(name)
        seen: set[bytes] = set()
        rest = {field: value for field, value in spec.items() if field != "Keys"}
        parameters[name] = rest
        for key_payload in keys:
            if len(entries) >= BATCH_GET_KEYS_MAX:
                raise ValidationException("Too many items requested for the BatchGetItem call")
            read = read_get(table, {**rest, "Key": key_payload}, key_bytes_max)
            if read.key in seen:
                raise ValidationException(_DUPLICATES)
            seen.add(read.key)
            entries.append(GetEntry(name, read, key_payload))
    return entries, parameters


def render_batch_get(
    entries: list[GetEntry],
    results: list[Item | BaseException | None],
    parameters: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """``Responses`` (found items, by table) and ``UnprocessedKeys`` (failed reads)."""
    responses: dict[str, list[dict[str, object]]] = {name: [] for name in parameters}
    unprocessed: dict[str, dict[str, Any]] = {}
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, BaseException):
            table = unprocessed.setdefault(
                entry.table_name, {**parameters[entry.table_name], "Keys": []}
            )
            table["Keys"].append(entry.key_payload)
        elif result is not None:
            responses[entry.table_name].append(render_item(result))
    return {"Responses": responses, "UnprocessedKeys": unprocessed}


def _write_entry(
    name: str, table: TableDefinition, request: object, key_bytes_max: int, value_bytes_max: int
) -> ItemWrite:
    if not isinstance(request, dict) or len(request) != 1:
        raise ValidationException(
            f"Invalid request for table {name}: each write request must hold exactly one of "
            "PutRequest or DeleteRequest"
        )
    put = map_field(request, "PutRequest")
    if put is not None:
        return read_put(table, {"Item": put.get("Item")}, key_bytes_max, value_bytes_max)
    delete = map_field(request, "DeleteRequest")
    if delete is not None:
        return read_delete(table, {"Key": delete.get("Key")}, key_bytes_max, value_bytes_max)
    raise ValidationException(
        f"Invalid request for table {name}: a write request must be PutRequest or DeleteRequest"
    )


def read_batch_write(
    body: dict[str, Any], find: FindTable, key_bytes_max: int, value_bytes_max: int
) -> list[WriteEntry]:
    entries: list[WriteEntry] = []
    for name, requests in _request_items(body).items():
        if not isinstance(requests, list) or not requests:
            raise ValidationException(
                "1 validation error detected: Value at 'requestItems."
                f"{name}.member' failed to satisfy constraint: Member must have length greater "
                "than or equal to 1"
            )
        table = find(name)
        seen: set[bytes] = set()
        for request in requests:
            if len(entries) >= BATCH_WRITE_REQUESTS_MAX:
                raise ValidationException("Too many items requested for the BatchWriteItem call")
            write = _write_entry(name, table, request, key_bytes_max, value_bytes_max)
            if write.key in seen:
                raise ValidationException(_DUPLICATES)
            seen.add(write.key)
            entries.append(WriteEntry(name, write, request))
    return entries


def render_batch_write(
    entries: list[WriteEntry], results: list[BaseException | None]
) -> dict[str, Any]:
    unprocessed: dict[str, list[object]] = {}
    for entry, result in zip(entries, results, strict=True):
        if result is not None:
            unprocessed.setdefault(entry.table_name, []).append(entry.request_payload)
    return {"UnprocessedItems": unprocessed}
