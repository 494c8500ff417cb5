"""Shard claims with leases, on any object store that has atomic create (S3, GCS, Azure, a local folder).

Keys (see `RunLayout`), per shard:

    claims/shard-000123/attempt-0001.json   created once (atomic create) by the worker that claims the shard
    claims/shard-000123/lease-0001.json     the lease of attempt 1; only attempt 1's worker writes it
    claims/shard-000123/attempt-0002.json   a takeover: created once, after attempt 1's lease expired
    results/shard-000123.jsonl              the shard is done (first completed result wins, atomic create)

Rules:
- The highest attempt of a shard owns it. Its lease expires at the `expiresAt` of its lease object, or of
  the attempt object itself while no lease object exists yet (a claim is a single atomic create).
- To claim a shard, a worker creates attempt N+1, where N is the highest attempt it sees: N = 0 for an
  unclaimed shard, or an attempt whose lease has expired or was released. Creation is atomic, so of
  any number of workers racing for the same N+1 exactly one wins; the others move on.
- The owner renews its lease (overwrites its own lease object with a later `expiresAt`) every
  lease/3 seconds from a heartbeat thread. Before renewing it lists the shard's attempts: once a higher
  attempt exists, it has lost the shard and stops renewing.
- Leases are wall-clock times written by the owner and read by others: hosts' clocks must agree to well
  within a lease (NTP). A late owner and a taker may both work on a shard for a while; that costs work,
  never correctness: results are created once, and pairs are stored per attempt and read through the
  results object that won.
- A shard with a results object is done, whatever its claims say. A worker that stops (SIGTERM) without
  results releases its lease (state "released", expired now), so another can take the shard at once.

No object is ever overwritten by two writers, so no conditional overwrite (etag) is needed: this works on
LocalStore, which has none.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Claim:
    """A claim this worker holds (or held)."""

    shard: int
    attempt: int
    worker: str
    token: str
    lease_seconds: float
    takeover: bool = False
    renewals: int = 0
    lost: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class ClaimKeys:
    """Where the claims of one kind of thing live: shards (the default), or the run's one writer."""

    prefix: Callable[[int | None], str]  # listing prefix of one shard's claims (None: of all)
    attempt: Callable[[int, int], str]
    lease: Callable[[int, int], str]
    parse: Callable[[str], tuple[int, str, int] | None]
    done: Callable[[int], str] | None  # an object whose existence means "nothing left to claim"


SHARD_CLAIMS = ClaimKeys(
    prefix=lambda shard: RunLayout.claims_root if shard is None else RunLayout.claim_prefix(shard),
    attempt=RunLayout.claim_attempt,
    lease=RunLayout.claim_lease,
    parse=RunLayout.parse_claim,
    done=RunLayout.results,
)
WRITER_CLAIMS = ClaimKeys(
    prefix=lambda _shard: RunLayout.writer_claims,
    attempt=lambda _shard, n: RunLayout.writer_attempt(n),
    lease=lambda _shard, n: RunLayout.writer_lease(n),
    parse=RunLayout.parse_writer_claim,
    done=None,
)


@dataclass(frozen=True)
class ClaimInfo:
    """What an observer sees of a shard's claims."""

    shard: int
    attempt: int  # highest attempt (0: never claimed)
    worker: str | None
    expires_at: float | None
    state: str  # "unclaimed", "held", "released"

    def free(self, now: float) -> bool:
        """May a new attempt be created now?"""
        if self.attempt == 0 or self.state == "released":
            return True
        return self.expires_at is None or now >= self.expires_at


class Claims:
    def __init__(
        self,
        store: ObjectStore,
        worker: str | None = None,
        lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        keys: ClaimKeys = SHARD_CLAIMS,
        reclaim_dead_local: bool = False,
    ):
        """`reclaim_dead_local`: take over at once from a holder on this host whose process is gone (the run's
        writer lease: a restarted `flowdpo run`), instead of waiting for its lease to run out."""
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.keys = keys
        self.reclaim_dead_local = reclaim_dead_local
        self.store = store
        self.worker = worker or new_worker_id()
        self.lease_seconds = lease_seconds
        self.clock = clock

    # -- observing -------------------------------------------------------------------------------------
    def done(self) -> set[int]:
        """Shards that have a results object."""
        return {RunLayout.shard_index(k) for k in self.store.list(RunLayout.results_root)}

    def attempts(self, shard: int | None = None) -> dict[int, int]:
        """Highest attempt number per shard (one LIST of claims/, or of one shard's folder)."""
        highest: dict[int, int] = {}
        for key in self.store.list(self.keys.prefix(shard)):
            parsed = self.keys.parse(key)
            if parsed and parsed[1] == "attempt":
                s, _, n = parsed
                highest[s] = max(highest.get(s, 0), n)
        return highest

    def inspect(self, shard: int, attempt: int | None = None) -> ClaimInfo:
        if attempt is None:
            attempt = self.attempts(shard).get(shard, 0)
        if attempt == 0:
            return ClaimInfo(shard, 0, None, None, "unclaimed")
        lease = self.store.get_json_or(self.keys.lease(shard, attempt))
        record = lease if lease is not None else self.store.get_json_or(self.keys.attempt(shard, attempt), {})
        return ClaimInfo(
            shard, attempt, record.get("worker"), record.get("expiresAt"), record.get("state", "held")
        )

    def _holder_is_dead(self, info: ClaimInfo) -> bool:
        """A holder on this very host whose process is gone (a SIGKILLed `flowdpo run` being restarted):
        its lease need not be waited out."""
        record = self.store.get_json_or(self.keys.attempt(info.shard, info.attempt), {})
        pid, host = record.get("pid"), record.get("host")
        if host != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    # -- claiming --------------------------------------------------------------------------------------
    def try_claim(self, shard: int, attempt_seen: int | None = None) -> Claim | None:
        """Claim `shard` if it is not done and unclaimed, released or expired; None otherwise.
        `attempt_seen`: the highest attempt the caller already listed (saves a LIST)."""
        if self.keys.done is not None and self.store.exists(self.keys.done(shard)):
            return None
        info = self.inspect(shard, attempt_seen)
        now = self.clock()
        if not info.free(now) and not (self.reclaim_dead_local and self._holder_is_dead(info)):
            return None
        n = info.attempt + 1
        token = uuid.uuid4().hex
        record = {
            "shard": shard,
            "attempt": n,
            "worker": self.worker,
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimedAt": now,
            "expiresAt": now + self.lease_seconds,
            "leaseSeconds": self.lease_seconds,
            "takeoverOf": info.attempt or None,
            "previousWorker": info.worker,
        }
        if not self.store.create_json(self.keys.attempt(shard, n), record):
            return None  # another worker created attempt n first
        if info.attempt:
            log.info("shard %d: took over from %s (attempt %d, %s)", shard, info.worker, n, info.state)
        return Claim(shard, n, self.worker, token, self.lease_seconds, takeover=bool(info.attempt))

    def claim_next(self, shards: Iterable[int], done: set[int] | None = None) -> Claim | None:
        """Claim the lowest-numbered claimable shard of `shards` (not done; unclaimed, released or expired)."""
        done = self.done() if done is None else done
        highest = self.attempts()
        for shard in sorted(shards):
            if shard in done:
                continue
            claim = self.try_claim(shard, highest.get(shard, 0))
            if claim is not None:
                return claim
        return None

    # -- holding ---------------------------------------------------------------------------------------
    def renew(self, claim: Claim) -> bool:
        """Extend the lease. False (and `claim.lost` set) once a later attempt owns the shard."""
        if claim.lost.is_set():
            return False
        if self.attempts(claim.shard).get(claim.shard, 0) > claim.attempt:
            log.warning("shard %d: lost the claim (a later attempt exists)", claim.shard)
            claim.lost.set()
            return False
        claim.renewals += 1
        self._write_lease(claim, "held", self.clock() + claim.lease_seconds)
        return True

    def release(self, claim: Claim, completed: bool) -> None:
        """Done with the shard: `completed` when its results exist; otherwise others may take it at once."""
        if claim.lost.is_set():
            return
        now = self.clock()
        if completed:
            self._write_lease(claim, "done", now + claim.lease_seconds)
        else:
            self._write_lease(claim, "released", now)

    def _write_lease(self, claim: Claim, state: str, expires_at: float) -> None:
        self.store.put_json(
            self.keys.lease(claim.shard, claim.attempt),
            {
                "attempt": claim.attempt,
                "worker": claim.worker,
                "token": claim.token,
                "state": state,
                "renewedAt": self.clock(),
                "expiresAt": expires_at,
                "renewals": claim.renewals,
            },
        )

    def heartbeat(self, claim: Claim, interval: float | None = None) -> Heartbeat:
        return Heartbeat(self, claim, interval if interval is not None else claim.lease_seconds / 3)


class Heartbeat:
    """Renews a claim's lease from a daemon thread while the shard is processed:

        with claims.heartbeat(claim):
            process(shard)
    """

    def __init__(self, claims: Claims, claim: Claim, interval: float):
        self.claims, self.claim, self.interval = claims, claim, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-shard-{claim.shard}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.claims.renew(self.claim):
                    return
            except Exception as e:  # noqa: BLE001 - storage down: keep trying; the lease may lapse
                log.warning("shard %d: lease renewal failed: %s", self.claim.shard, str(e).splitlines()[0][:200])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)  # a renewal stuck in a storage outage must not block shutdown
