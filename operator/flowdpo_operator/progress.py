"""Read a run's progress.json from its object storage, with the credentials of the run's Secret.

The credentials are passed to the store as a mapping (`ObjectStore(env=...)`), never through the operator's
own environment: handlers of different runs read concurrently in kopf's thread pool, each with its own
Secret. The retry budget is short (a handler must not hang on an unreachable endpoint); the next timer tick
reads again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flowdpo.run.records import progress_problem
from flowdpo.storage import CorruptObjectError, ObjectStore, RunLayout

from .world import ObservedStorage

log = logging.getLogger(__name__)

READ_RETRY_SECONDS = 5.0


def read_progress(
    uri: str, env: Mapping[str, str] | None, *, retry_seconds: float = READ_RETRY_SECONDS
) -> ObservedStorage:
    """progress.json of the run at `uri` (None when not written yet), or the reason it could not be read."""
    try:
        store = ObjectStore(uri, retry_seconds=retry_seconds, create=False, env=env)
        progress = store.get_json_or(RunLayout.progress)
    except CorruptObjectError as e:  # the storage answered; the object is damaged
        return ObservedStorage(reachable=True, error=str(e))
    except Exception as e:  # noqa: BLE001 - obstore's errors (auth, DNS, TLS, bucket) all mean "cannot read"
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        log.debug("reading %s/%s failed: %s", uri, RunLayout.progress, e)
        return ObservedStorage(reachable=False, error=f"{type(e).__name__}: {first_line[:300]}")
    problem = None if progress is None else progress_problem(progress)
    if problem:  # damaged, or written by something else: named in the status, never a reconcile traceback
        return ObservedStorage(reachable=True, error=f"{RunLayout.progress} is not a progress record ({problem})")
    return ObservedStorage(reachable=True, progress=progress)
