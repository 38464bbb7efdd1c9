"""dynakv: a leaderless, Dynamo-style distributed key-value store.

Public facade: ``dynakv.Client`` and ``dynakv.AsyncClient`` (HTTP clients with
failover) and the error tree in ``dynakv.errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dynakv.client.asyncclient import AsyncClient
    from dynakv.client.syncclient import Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import dynakv` in a node process does not load the client.
    if name == "Client":
        from dynakv.client.syncclient import Client

        return Client
    if name == "AsyncClient":
        from dynakv.client.asyncclient import AsyncClient

        return AsyncClient
    raise AttributeError(name)
