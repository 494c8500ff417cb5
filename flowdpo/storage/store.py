"""A small object-store interface over `obstore`.

Why obstore: one client for S3, GCS, Azure and a local folder, with *atomic create*
(`mode="create"`, a conditional PUT on the clouds, `O_EXCL`-style on local disk) everywhere. Claims and
"first result wins" markers need exactly that; fsspec/boto3 would need per-backend code for it.

Every object is written whole (a PUT is atomic): a crash never leaves half a file, so any component can
restart from what is in the store. Keys are relative to the run prefix given at `open_store`.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError


class StoreError(RuntimeError):
    """A storage problem the user must fix (bad URI, missing credentials, permissions)."""


# Ride out seconds-long outages of the endpoint; the defaults give up after ~2 s of connection refused.
_RETRY = {
    "max_retries": 30,
    "retry_timeout": timedelta(seconds=60),
    "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2), "base": 2},
}


class ObjectStore:
    """Keys under one run prefix. Local paths (file://) and cloud URIs behave the same."""

    def __init__(self, uri: str):
        self.uri = uri
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            # file://./rel/dir and file://rel/dir are relative to the working directory.
            raw = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
            root = Path(raw).expanduser().resolve()
            root.mkdir(parents=True, exist_ok=True)
            self.local_root: Path | None = root
            self._store = obstore.store.LocalStore(root, mkdir=True)
        elif parsed.scheme == "memory":
            self.local_root = None
            self._store = obstore.store.MemoryStore()
        elif parsed.scheme in ("s3", "gs", "az", "abfs"):
            self.local_root = None
            kwargs: dict[str, Any] = {"retry_config": _RETRY}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if parsed.scheme == "s3":
                kwargs["client_options"] = {"connect_timeout": "2s", "timeout": "30s"}
                if endpoint:
                    kwargs["endpoint"] = endpoint
                    kwargs["client_options"]["allow_http"] = endpoint.startswith("http://")
                kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            try:
                self._store = obstore.store.from_url(uri, **kwargs)
            except Exception as e:  # noqa: BLE001 - obstore raises several config error types
                raise StoreError(f"cannot open object store {uri!r}: {e}") from None
        else:
            raise StoreError(f"unsupported storage URI {uri!r}: use file://, s3://, gs://, az:// or memory://")

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    # -- bytes ---------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The object's bytes; raises KeyError if absent."""
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (FileNotFoundError, NotFoundError):
            raise KeyError(key) from None

    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) a whole object atomically."""
        obstore.put(self._store, key, data, use_multipart=False)

    def create(self, key: str, data: bytes) -> bool:
        """Atomic create: True if this call created the object, False if it already existed."""
        try:
            obstore.put(self._store, key, data, mode="create", use_multipart=False)
            return True
        except (AlreadyExistsError, FileExistsError):
            return False

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
            return True
        except (FileNotFoundError, NotFoundError):
            return False

    def list(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix` (a folder-like prefix ending in '/')."""
        keys: list[str] = []
        for batch in obstore.list(self._store, prefix=prefix.rstrip("/") or None):
            keys.extend(meta["path"] for meta in batch)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except (FileNotFoundError, NotFoundError):
            pass

    # -- conveniences --------------------------------------------------------------------------------
    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def get_json_or(self, key: str, default: Any = None) -> Any:
        try:
            return self.get_json(key)
        except KeyError:
            return default

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, _dumps(value))

    def create_json(self, key: str, value: Any) -> bool:
        return self.create(key, _dumps(value))

    def get_jsonl(self, key: str) -> list[dict]:
        return [json.loads(line) for line in self.get(key).decode().splitlines() if line.strip()]

    def create_jsonl(self, key: str, rows: list[dict]) -> bool:
        return self.create(key, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def put_folder(self, prefix: str, folder: Path) -> None:
        """Upload every file of a local folder under `prefix/` (used for adapter checkpoints)."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}", path.read_bytes())

    def get_folder(self, prefix: str, folder: Path) -> Path:
        """Download every object under `prefix/` into a local folder."""
        keys = self.list(prefix.rstrip("/") + "/")
        if not keys:
            raise KeyError(prefix)
        for key in keys:
            dest = folder / key[len(prefix.rstrip("/")) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.get(key))
        return folder


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def open_store(uri: str) -> ObjectStore:
    return ObjectStore(uri)
