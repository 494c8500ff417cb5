"""A small object-store interface over `obstore`.

Why obstore: one client for S3, GCS, Azure and a local folder, with *atomic create*
(`mode="create"`, a conditional PUT on the clouds, `O_EXCL`-style on local disk) everywhere. Claims and
"first result wins" markers need exactly that; fsspec/boto3 would need per-backend code for it.

Every object is written whole (a PUT is atomic): a crash never leaves half a file, so any component can
restart from what is in the store. Keys are relative to the run prefix given at `open_store`; for
`s3://bucket/some/prefix` they land under `some/prefix/` in the bucket.

S3 is configured from the standard environment (a Kubernetes Secret mounted as env vars):
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
(MinIO-style endpoints, path-style requests), AWS_REGION / AWS_DEFAULT_REGION. Every call rides out
transient endpoint failures (connection refused, timeouts, 5xx) with backoff for
FLOWDPO_STORE_RETRY_SECONDS (default 300); writes are idempotent so retrying them is safe. See
docs/adr-0001-object-store.md.

A process that reads several runs with different credentials (the Kubernetes operator reading each run's
progress.json with the keys of that run's Secret) passes them as `env=` instead: the store is then
configured from that mapping, never from (or by changing) the process environment, so it is thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    JoinError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

from flowdpo.envvars import env_number

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(RuntimeError):
    """A storage problem the user must fix (bad URI, missing credentials, permissions)."""


class CorruptObjectError(StoreError):
    """An object of the run exists but cannot be read as what it must be (truncated, overwritten, garbage)."""

    def __init__(self, where: str, problem: str):
        super().__init__(
            f"{where}: {problem}. The object is damaged: restore it from a backup, or delete it if the run can "
            "redo it (a shard's results or pairs are redone; spec.yaml, examples/ and adapters/ are not)"
        )
        self.where = where


# obstore's own retries (inside one call): connection errors, 5xx, timeouts of read-only requests.
# With these settings a "connection refused" endpoint is retried for up to 30 s.
_RETRY = {
    "max_retries": 30,
    "retry_timeout": timedelta(seconds=30),
    "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=1), "base": 2},
}
# Outer retries (around each call, see `ObjectStore._retry`): obstore does not retry a PUT that timed
# out (it may have landed), and gives up after `retry_timeout`. Writes are idempotent here (overwrites of
# whole objects; creates recognise their own earlier, landed attempt), so retrying them is safe.
_RETRY_SECONDS_ENV = "FLOWDPO_STORE_RETRY_SECONDS"  # total time to ride out an outage (default 300)
_TIMEOUT_ENV = "FLOWDPO_STORE_TIMEOUT"  # per-request timeout of cloud stores (default "30s")
_TRANSIENT_MARKERS = (
    "error sending request",
    "timed out",
    "timeout",
    "connection",
    "dropped",
    "non-2xx status code: 5",
    "slowdown",
    "service unavailable",
    "internal error",
)


# Errors that retrying cannot fix: the credentials are missing, wrong or lack a permission.
_AUTH_MARKERS = (
    "credential",
    "403 forbidden",
    "401 unauthorized",
    "accessdenied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "expiredtoken",
    "authorizationfailure",
    "authenticationfailed",
)
# Missing bucket / container: S3, GCS, Azure. Without this a missing bucket reads as a missing object.
_NO_BUCKET_MARKERS = ("nosuchbucket", "the specified bucket does not exist", "containernotfound")


def _summary(err: BaseException) -> str:
    """What an obstore error says, without the debug dump it appends (which quotes settings such as
    `retry_timeout`, so matching words in it misclassifies errors)."""
    return str(err).split("\n\nDebug source:")[0]


def _classify(err: BaseException) -> str:
    """"auth", "transient" (retry), "no-bucket" or "other" (raise as it is)."""
    if isinstance(err, (PermissionDeniedError, UnauthenticatedError)):
        return "auth"
    if isinstance(err, JoinError):
        return "transient"
    msg = _summary(err).lower()
    if isinstance(err, (NotFoundError, FileNotFoundError)):
        return "no-bucket" if any(m in msg for m in _NO_BUCKET_MARKERS) else "other"
    if isinstance(err, GenericError):
        if any(m in msg for m in _AUTH_MARKERS):
            return "auth"
        if any(m in msg for m in _NO_BUCKET_MARKERS):
            return "no-bucket"
        if any(m in msg for m in _TRANSIENT_MARKERS):
            return "transient"
    return "other"


_CLOUD_ENV_PREFIX = {"gs": "GOOGLE_", "az": "AZURE_", "abfs": "AZURE_"}
# Variables of GOOGLE_* / AZURE_* that carry a credential (service account key, account key, SAS, client
# secret or token): without one, a store built from a Secret sends unsigned requests.
_CLOUD_CREDENTIAL_MARKERS = ("SERVICE_ACCOUNT", "APPLICATION_CREDENTIALS", "ACCESS_KEY", "ACCOUNT_KEY", "SAS",
                             "CLIENT_SECRET", "TOKEN", "FEDERATED")


def _s3_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """S3 (and S3-compatible: MinIO, Ceph, moto) from the standard AWS environment variables.

    Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (how a Kubernetes Secret is
    usually mounted), or web identity / instance metadata, all read by obstore itself. Endpoint:
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (path-style requests; plain http allowed when the endpoint is
    http://). Region: AWS_REGION / AWS_DEFAULT_REGION (default us-east-1). The URI's path is the key prefix
    inside the bucket (obstore's `from_url` makes it the store's prefix).

    `env`: read these variables from this mapping instead of `os.environ`, and use ONLY its credentials: a
    fixed credential provider with its keys, or unsigned requests when it has none. The process's own
    identity (its AWS_* keys, web identity, instance metadata) is never used for such a store, so an
    operator reading a run with the run's Secret cannot lend its identity to an endpoint the run names
    (the timeout stays a setting of the process)."""
    src = os.environ if env is None else env
    opts: dict[str, Any] = {}
    client: dict[str, Any] = {"connect_timeout": "2s", "timeout": os.environ.get(_TIMEOUT_ENV, "30s")}
    endpoint = src.get("AWS_ENDPOINT_URL_S3") or src.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint"] = endpoint
        client["allow_http"] = endpoint.startswith("http://")
    opts["region"] = src.get("AWS_REGION") or src.get("AWS_DEFAULT_REGION") or "us-east-1"
    opts["client_options"] = client
    if env is not None:
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            credential = {
                "access_key_id": env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                "token": env.get("AWS_SESSION_TOKEN") or None,
                "expires_at": None,
            }
            opts["credential_provider"] = lambda: credential
        else:
            opts["skip_signature"] = True
    return opts


class ObjectStore:
    """Keys under one run prefix. Local paths (file://) and cloud URIs behave the same.

    Every call rides out transient errors of the endpoint (connection refused, timeouts, 5xx) for
    `retry_seconds` (env FLOWDPO_STORE_RETRY_SECONDS, default 300) with exponential backoff.
    `env`: configure a cloud store from this mapping of AWS_* / GOOGLE_* / AZURE_* variables instead of
    the process environment (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        retry_seconds: float | None = None,
        *,
        create: bool = True,
        env: Mapping[str, str] | None = None,
    ):
        self.uri = uri
        self.retry_seconds = (
            env_number(_RETRY_SECONDS_ENV, 300.0, minimum=0) if retry_seconds is None else retry_seconds
        )
        parsed = urlparse(uri)
        self.cloud = parsed.scheme in ("s3", "gs", "az", "abfs")
        if parsed.scheme == "file":
            # file://./rel/dir and file://rel/dir are relative to the working directory.
            raw = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
            root = Path(raw).expanduser().resolve()
            if not create and not root.is_dir():
                raise StoreError(f"{root}: no such run folder")
            root.mkdir(parents=True, exist_ok=True)
            self.local_root: Path | None = root
            self._store = obstore.store.LocalStore(root, mkdir=True)
        elif parsed.scheme == "memory":
            self.local_root = None
            self._store = obstore.store.MemoryStore()
        elif self.cloud:
            self.local_root = None
            if not parsed.netloc:
                raise StoreError(f"storage URI {uri!r} names no bucket/container")
            # obstore's own retries must not outlast the caller's whole budget (a short one: the operator).
            retry = _RETRY
            if self.retry_seconds < _RETRY["retry_timeout"].total_seconds():
                retry = {**_RETRY, "retry_timeout": timedelta(seconds=self.retry_seconds)}
            kwargs: dict[str, Any] = {"retry_config": retry}
            if parsed.scheme == "s3":
                kwargs.update(_s3_options(env))
            else:
                kwargs["client_options"] = {"connect_timeout": "2s", "timeout": os.environ.get(_TIMEOUT_ENV, "30s")}
                if env is not None:
                    prefix = _CLOUD_ENV_PREFIX[parsed.scheme]
                    config = {k: v for k, v in env.items() if k.startswith(prefix)}
                    if not any(marker in k for k in config for marker in _CLOUD_CREDENTIAL_MARKERS):
                        config["skip_signature"] = True  # no key in the Secret: unsigned, never ambient
                    kwargs["config"] = config
            try:
                self._store = obstore.store.from_url(uri, **kwargs)
            except Exception as e:  # noqa: BLE001 - obstore raises several config error types
                raise StoreError(f"cannot open object store {uri!r}: {e}") from None
        else:
            raise StoreError(f"unsupported storage URI {uri!r}: use file://, s3://, gs://, az:// or memory://")

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run one store call, retrying transient failures with backoff until `retry_seconds` passed."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return fn()
            except Exception as e:  # classified below
                kind = _classify(e)
                if kind == "auth":
                    raise StoreError(
                        f"{self.uri}: {what}: access denied or no valid credentials ({_summary(e).splitlines()[0][:300]}). "
                        "Check the storage credentials: AWS_* / GOOGLE_* / AZURE_* variables, or the keys of the "
                        "Secret named in spec.storage.secretName"
                    ) from None
                if kind == "no-bucket":
                    raise StoreError(
                        f"{self.uri}: the bucket (or container) does not exist; create it, or fix spec.storage.uri"
                    ) from None
                if kind != "transient":
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"{self.uri}: {what} failed for {self.retry_seconds:.0f}s: {e}") from None
                log.warning("%s: %s failed (%s); retrying in %.1fs", self.uri, what, str(e).splitlines()[0][:200], delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    # -- bytes ---------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The object's bytes; raises KeyError if absent."""
        try:
            return self._retry(f"GET {key}", lambda: bytes(obstore.get(self._store, key).bytes()))
        except (FileNotFoundError, NotFoundError):
            raise KeyError(key) from None

    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) a whole object atomically (retried: the same bytes again is harmless)."""
        try:
            self._retry(f"PUT {key}", lambda: obstore.put(self._store, key, data, use_multipart=False))
        except (FileNotFoundError, NotFoundError) as e:  # S3: NoSuchBucket
            raise StoreError(f"{self.uri}: cannot write {key}: {str(e).splitlines()[0]}") from None

    def create(self, key: str, data: bytes) -> bool:
        """Atomic create: True if this call created the object, False if it already existed.

        Exclusive: an object that existed before this call is never reported as created, whatever it
        holds. Only when an earlier try of this same call failed in transit (it may have landed) and the
        object now holds exactly `data` is that taken as this call's own write. Callers that need one
        winner among racers put something unique in `data` (an attempt id)."""
        tries = 0

        def once() -> bool | None:
            nonlocal tries
            tries += 1
            try:
                obstore.put(self._store, key, data, mode="create", use_multipart=False)
                return True
            except (AlreadyExistsError, FileExistsError):
                return None if tries > 1 else False

        try:
            created = self._retry(f"CREATE {key}", once)
        except (FileNotFoundError, NotFoundError) as e:  # S3: NoSuchBucket
            raise StoreError(f"{self.uri}: cannot write {key}: {str(e).splitlines()[0]}") from None
        if created is not None:
            return created
        try:  # an earlier try of this call may have landed before its answer was lost
            return self.get(key) == data
        except KeyError:  # created and deleted in between: not ours
            return False

    def exists(self, key: str) -> bool:
        try:
            self._retry(f"HEAD {key}", lambda: obstore.head(self._store, key))
            return True
        except (FileNotFoundError, NotFoundError):
            return False

    def list(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix` (a folder-like prefix ending in '/')."""

        def once() -> list[str]:
            keys: list[str] = []
            for batch in obstore.list(self._store, prefix=prefix.rstrip("/") or None):
                keys.extend(meta["path"] for meta in batch)
            return keys

        try:
            return sorted(self._retry(f"LIST {prefix}", once))
        except (FileNotFoundError, NotFoundError):
            return []
        except GenericError as e:
            raise StoreError(f"{self.uri}: cannot list {prefix}: {str(e).splitlines()[0]}") from None

    def delete(self, key: str) -> None:
        try:
            self._retry(f"DELETE {key}", lambda: obstore.delete(self._store, key))
        except (FileNotFoundError, NotFoundError):
            pass

    # -- conveniences --------------------------------------------------------------------------------
    def get_json(self, key: str) -> Any:
        return _parse_json(self.get(key), f"{self.uri}/{key}")

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
        where = f"{self.uri}/{key}"
        try:
            lines = self.get(key).decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CorruptObjectError(where, "not UTF-8 text") from None
        rows = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                row = _parse_json(line, f"{where} line {n}")
                if not isinstance(row, dict):
                    raise CorruptObjectError(f"{where} line {n}", "not a JSON object")
                rows.append(row)
        return rows

    def create_jsonl(self, key: str, rows: list[dict]) -> bool:
        return self.create(key, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def put_folder(self, prefix: str, folder: Path) -> None:
        """Upload every file of a local folder under `prefix/` (used for adapter checkpoints)."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}", path.read_bytes())

    def get_files(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix/` as {path relative to prefix: bytes} (empty if there is none)."""
        base = prefix.rstrip("/") + "/"
        return {key[len(base) :]: self.get(key) for key in self.list(base)}

    def get_folder(self, prefix: str, folder: Path) -> Path:
        """Download every object under `prefix/` into a local folder."""
        files = self.get_files(prefix)
        if not files:
            raise KeyError(prefix)
        for rel, blob in files.items():
            if rel.startswith("/") or ".." in rel.split("/"):
                raise StoreError(f"{self.uri}/{prefix}: refusing to write object {rel!r} outside {folder}")
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)
        return folder


def _parse_json(blob: bytes | str, where: str) -> Any:
    try:
        return json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObjectError(where, f"not valid JSON ({e})") from None


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def open_store(uri: str, *, create: bool = True, env: Mapping[str, str] | None = None) -> ObjectStore:
    """`create=False`: a local run folder must already exist (read-only commands: status, report).
    `env`: credentials and endpoint as a mapping of environment variables (see `ObjectStore`)."""
    return ObjectStore(uri, create=create, env=env)
