"""The shard claim protocol (flowdpo.run.claims) on a local folder and on a REAL S3 endpoint (moto):
one winner among concurrent claimers, no takeover before the lease expires, takeover after, exactly one
winner among concurrent takers, renewal keeps the claim, release frees it, a done shard is never claimed."""

from __future__ import annotations

import threading
import time

import pytest

from flowdpo.run.claims import Claims
from flowdpo.run.common import trainer_consumed
from flowdpo.storage import RunLayout, open_store


class Clock:
    def __init__(self, t: float = 1_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path}/run")
    s3 = request.getfixturevalue("s3_env")
    return open_store(s3.uri())


def _race(n: int, fn):
    """Run fn(i) in n threads released together; returns the results."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(i):
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_one_winner_among_concurrent_claimers(store):
    clock = Clock()
    got = _race(12, lambda i: Claims(store, f"w{i}", lease_seconds=30, clock=clock).try_claim(5))
    winners = [c for c in got if c is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 1 and not winners[0].takeover
    record = store.get_json(RunLayout.claim_attempt(5, 1))
    assert record["worker"] == winners[0].worker and record["token"] == winners[0].token
    assert store.list(RunLayout.claim_prefix(5)) == [RunLayout.claim_attempt(5, 1)]


def test_no_takeover_before_expiry_then_exactly_one_taker(store):
    clock = Clock()
    a = Claims(store, "a", lease_seconds=10, clock=clock)
    claim = a.try_claim(0)
    assert claim is not None
    clock.t += 9.9
    assert Claims(store, "b", lease_seconds=10, clock=clock).try_claim(0) is None
    clock.t += 0.2  # the lease of attempt 1 has expired: exactly one of many takers gets attempt 2
    got = _race(8, lambda i: Claims(store, f"t{i}", lease_seconds=10, clock=clock).try_claim(0))
    takers = [c for c in got if c is not None]
    assert len(takers) == 1 and takers[0].attempt == 2 and takers[0].takeover
    record = store.get_json(RunLayout.claim_attempt(0, 2))
    assert record["takeoverOf"] == 1 and record["previousWorker"] == "a" and record["worker"] == takers[0].worker
    # The old owner finds out at its next renewal and stops renewing.
    assert a.renew(claim) is False and claim.lost.is_set()
    assert not store.exists(RunLayout.claim_lease(0, 1))
    # The new owner holds it: nobody takes it over before its lease expires.
    clock.t += 5
    assert Claims(store, "c", lease_seconds=10, clock=clock).try_claim(0) is None


def test_renewal_keeps_the_claim(store):
    clock = Clock()
    a = Claims(store, "a", lease_seconds=10, clock=clock)
    b = Claims(store, "b", lease_seconds=10, clock=clock)
    claim = a.try_claim(3)
    for _ in range(5):  # renewed every 8 s for 40 s: never free
        clock.t += 8
        assert a.renew(claim)
        assert b.try_claim(3) is None
    lease = store.get_json(RunLayout.claim_lease(3, 1))
    assert lease["expiresAt"] == clock.t + 10 and lease["renewals"] == 5 and lease["state"] == "held"
    clock.t += 10.5  # renewals stopped (the worker died): taken over
    assert b.try_claim(3).attempt == 2


def test_release_frees_the_shard_at_once_and_done_shards_are_never_claimed(store):
    clock = Clock()
    a = Claims(store, "a", lease_seconds=60, clock=clock)
    b = Claims(store, "b", lease_seconds=60, clock=clock)
    c0 = a.claim_next(range(4))
    assert c0.shard == 0
    c1 = a.claim_next(range(4))
    assert c1.shard == 1  # lowest claimable first
    store.create_jsonl(RunLayout.results(2), [{"exampleId": "x"}])
    assert b.claim_next(range(4)).shard == 3  # 0, 1 held; 2 done
    assert b.try_claim(2) is None
    a.release(c1, completed=False)  # e.g. SIGTERM: another worker may take it immediately
    taken = b.claim_next(range(4))
    assert (taken.shard, taken.attempt, taken.takeover) == (1, 2, True)
    assert a.done() == {2}
    assert trainer_consumed(store) == 0
    store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(7)})
    assert trainer_consumed(store) == 7


def test_heartbeat_renews_in_real_time(s3_env):
    store = open_store(s3_env.uri())
    a = Claims(store, "a", lease_seconds=1.5)
    b = Claims(store, "b", lease_seconds=1.5)
    claim = a.try_claim(0)
    with a.heartbeat(claim):
        deadline = time.monotonic() + 3.5  # more than twice the lease
        while time.monotonic() < deadline:
            assert b.try_claim(0) is None
            time.sleep(0.2)
    assert claim.renewals >= 3 and not claim.lost.is_set()
    # The heartbeat stopped without a release (as if the worker died): free after the lease.
    t0 = time.monotonic()
    while (taken := b.try_claim(0)) is None:
        assert time.monotonic() - t0 < 5
        time.sleep(0.1)
    assert taken.attempt == 2 and 0.3 < time.monotonic() - t0 < 3


def test_one_writer_per_run_on_both_stores(store):
    """The run's writer lease (flowdpo/run/writer.py) on a local folder and on the S3 API: a second writer is
    refused while the first holds it, and starts once it is released."""
    from flowdpo.run.writer import RunBusyError, WriterLease

    first = WriterLease(store, "trainer", lease_seconds=30).acquire(wait=False)
    with pytest.raises(RunBusyError, match=first.claim.worker):
        WriterLease(store, "run", lease_seconds=30).acquire(wait=False)
    first.release()
    WriterLease(store, "run", lease_seconds=30).acquire(wait=False).release()
