"""One writer per run (flowdpo/run/writer.py): a second `flowdpo run` or trainer is refused before it writes,
a crashed writer on the same host is taken over at once, and a writer that lost its lease stops."""

import subprocess
import sys

import pytest

from flowdpo.run.writer import RunBusyError, WriterLease
from flowdpo.storage import RunLayout, open_store


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/run")


def test_a_second_writer_is_refused_and_the_next_one_starts_after_release(store):
    first = WriterLease(store, "run", lease_seconds=30).acquire(wait=False)
    with pytest.raises(RunBusyError, match="another process is writing this run") as err:
        WriterLease(store, "trainer", lease_seconds=30).acquire(wait=False)
    assert first.claim.worker in str(err.value)
    first.check()  # the holder may go on writing
    first.release()
    second = WriterLease(store, "run", lease_seconds=30).acquire(wait=False)
    assert second.claim.attempt == 2
    second.release()


def test_a_dead_writer_on_this_host_is_taken_over_at_once(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True)
    pid = int(dead.stdout)
    lease = WriterLease(store, "run", lease_seconds=3600).acquire(wait=False)
    lease._heartbeat.__exit__(None, None, None)  # simulate a SIGKILL: no release, a lease valid for an hour
    record = store.get_json(RunLayout.writer_attempt(1))
    store.delete(RunLayout.writer_attempt(1))
    store.create_json(RunLayout.writer_attempt(1), {**record, "pid": pid})  # held by a process that is gone
    again = WriterLease(store, "run", lease_seconds=3600).acquire(wait=False)
    assert again.claim.attempt == 2 and again.claim.takeover
    with pytest.raises(RunBusyError, match="lost the run's writer lease"):
        lease.check()  # the old writer, had it survived, would stop before writing
    again.release()


def test_create_is_exclusive_even_for_identical_bytes(store):
    assert store.create("x.json", b"same") is True
    assert store.create("x.json", b"same") is False
