"""dynakv.api: the native HTTP API a node serves.

``HttpServer`` (``api/http.py``) speaks HTTP/1.1; ``Router`` (``api/routes.py``)
maps requests onto a ``KvBackend`` (``api/backend.py``), which the node
runtime implements. See docs/api.md for the wire reference.

``HttpServer`` is imported lazily so the client can use ``dynakv.api.errors``
without loading the server (or httptools).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynakv.api.backend import GetResult, KvBackend

if TYPE_CHECKING:
    from dynakv.api.http import HttpServer

__all__ = ["GetResult", "HttpServer", "KvBackend"]


def __getattr__(name: str) -> Any:
    if name == "HttpServer":
        from dynakv.api.http import HttpServer

        return HttpServer
    raise AttributeError(name)
