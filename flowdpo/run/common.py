"""What `flowdpo worker` and `flowdpo trainer` share: waiting for the prepared run, and reading the
trainer's position from storage."""

from __future__ import annotations

import logging
import time

from flowdpo.run.prepare import ensure_spec
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)


def wait_for_run(store: ObjectStore, doc: RunDocument, poll_seconds: float = 2.0, timeout: float | None = None) -> dict:
    """Check the stored spec is this run's (RunConflictError if not; written if absent) and wait for
    `flowdpo prepare` to have written the examples manifest; returns the manifest."""
    ensure_spec(store, doc)
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        manifest = store.get_json_or(RunLayout.manifest)
        if manifest is not None:
            return manifest
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{store.uri}: no {RunLayout.manifest} after {timeout:.0f}s (run `flowdpo prepare`)")
        if not announced:
            log.warning("%s: waiting for `flowdpo prepare` (%s)", store.uri, RunLayout.manifest)
            announced = True
        time.sleep(poll_seconds)


def open_program(doc: RunDocument, metrics, poll_seconds: float):
    """What the worker and trainer programs do first: open the run's store, report phase Pending, and wait
    for the prepared run. Returns (store, metrics, manifest)."""
    from flowdpo.metrics import Metrics
    from flowdpo.storage import open_store

    store = open_store(doc.storage_uri())
    metrics = metrics or Metrics(doc.name)
    metrics.set_phase("Pending")
    return store, metrics, wait_for_run(store, doc, poll_seconds)


def trainer_consumed(store: ObjectStore) -> int:
    """Shards the trainer has consumed (it consumes in order: shards 0..n-1), from its state pointer."""
    pointer = store.get_json_or(RunLayout.trainer_latest)
    return 0 if pointer is None else RunLayout.consumed_of_state(pointer["key"])
