"""Object storage: the contract between every component (see `layout` for the key layout)."""

from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import ObjectStore, StoreError, open_store

__all__ = ["ObjectStore", "RunLayout", "StoreError", "open_store"]
