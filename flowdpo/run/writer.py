"""One writer per run: the trainer program and `flowdpo run` hold the run's writer lease while they train.

Two writers on one run would each roll out every shard, publish adapter versions over each other and delete
each other's optimizer state. The lease is a claim (`flowdpo.run.claims`, keys writer/): an atomic
create of the next attempt, renewed from a heartbeat thread, taken over once it expires. A holder on the same
host whose process is gone (a SIGKILLed `flowdpo run` being restarted) is taken over at once; elsewhere a
crashed holder's lease runs out after `lease_seconds`.

`flowdpo run` refuses to start while another writer holds the run; the trainer program waits for the lease
(a restarted trainer pod waits out its predecessor's). Both stop before their next write once they have lost
it (`check`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from flowdpo.envvars import env_number
from flowdpo.run.claims import WRITER_CLAIMS, Claim, Claims, Heartbeat, new_worker_id
from flowdpo.storage import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 60.0  # FLOWDPO_WRITER_LEASE_SECONDS overrides it


class RunBusyError(RuntimeError):
    """Another process is writing this run."""


class WriterLease:
    def __init__(self, store: ObjectStore, role: str, lease_seconds: float | None = None):
        if lease_seconds is None:
            lease_seconds = env_number("FLOWDPO_WRITER_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, positive=True)
        self.store = store
        self.claims = Claims(
            store, f"{role}-{new_worker_id()}", lease_seconds, keys=WRITER_CLAIMS, reclaim_dead_local=True
        )
        self.claim: Claim | None = None
        self._heartbeat: Heartbeat | None = None

    def _busy_message(self) -> str:
        info = self.claims.inspect(0)
        until = (
            dt.datetime.fromtimestamp(info.expires_at, dt.timezone.utc).isoformat(timespec="seconds")
            if info.expires_at
            else "unknown"
        )
        return (
            f"{self.store.uri}: another process is writing this run ({info.worker}, lease until {until}). Two "
            "writers would roll out every shard twice and overwrite each other's adapters: stop the other one "
            f"first. If it crashed on another host, its lease runs out {self.claims.lease_seconds:.0f} s after "
            "its last renewal; then run this again."
        )

    def acquire(self, *, wait: bool, poll_seconds: float = 2.0) -> WriterLease:
        """Hold the lease (renewed in the background until `release`); returns self, a context manager."""
        announced = 0.0
        while True:
            claim = self.claims.try_claim(0)
            if claim is not None:
                self.claim = claim
                self._heartbeat = self.claims.heartbeat(claim).__enter__()
                log.info("%s: writing this run as %s", self.store.uri, claim.worker)
                return self
            if not wait:
                raise RunBusyError(self._busy_message())
            if time.monotonic() - announced > 60:
                log.warning("%s; waiting", self._busy_message())
                announced = time.monotonic()
            time.sleep(poll_seconds)

    def check(self) -> None:
        """Raise before a write once another writer has taken the run over (this one stalled past its lease)."""
        if self.claim is None or self.claim.lost.is_set() or not self.claims.renew(self.claim):
            raise RunBusyError(
                f"{self.store.uri}: lost the run's writer lease to another process; stopping before writing"
            )

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.__exit__(None, None, None)
            self._heartbeat = None
        if self.claim is not None:
            try:
                self.claims.release(self.claim, completed=False)  # the next writer may start at once
            except Exception as e:  # noqa: BLE001 - storage down at exit: the lease simply runs out
                log.warning("%s: could not release the writer lease: %s", self.store.uri, e)
            self.claim = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()
