"""dynakv.client: Python clients for the native HTTP API.

``Client`` (blocking, ``http.client``) and ``AsyncClient`` (asyncio streams)
share request building, response parsing and failover in ``common``.
"""

from __future__ import annotations

from dynakv.client.asyncclient import AsyncClient
from dynakv.client.common import Item, NoEndpointReachable, ResponseLost
from dynakv.client.syncclient import Client

__all__ = ["AsyncClient", "Client", "Item", "NoEndpointReachable", "ResponseLost"]
