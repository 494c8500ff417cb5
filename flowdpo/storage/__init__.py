"""Object storage: the contract between every component (see `layout` for the key layout)."""

from flowdpo.storage.layout import RunLayout
from flowdpo.storage.store import CorruptObjectError, ObjectStore, StoreError, open_store

__all__ = ["CorruptObjectError", "ObjectStore", "RunLayout", "StoreError", "open_store"]
