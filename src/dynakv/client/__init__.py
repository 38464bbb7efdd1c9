"""dynakv.client: Python clients for the native HTTP API.

``Client`` (blocking, ``http.client``) and ``AsyncClient`` (asyncio streams)
share request building, response parsing and failover in ``common``;
``Session`` / ``AsyncSession`` (``client.session()``) add session consistency.
"""

from __future__ import annotations

from dynakv.client.asyncclient import AsyncClient, AsyncSession
from dynakv.client.common import Item, NoEndpointReachable, ResponseLost
from dynakv.client.syncclient import Client, Session

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "Item",
    "NoEndpointReachable",
    "ResponseLost",
    "Session",
]
