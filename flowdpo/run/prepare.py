"""`flowdpo prepare`: materialise the dataset into example shards under the run prefix (idempotent)."""

from __future__ import annotations

import hashlib
import json
import logging

from flowdpo.data import Example, load_examples
from flowdpo.spec import RunDocument
from flowdpo.storage import ObjectStore, RunLayout

log = logging.getLogger(__name__)


class RunConflictError(RuntimeError):
    """The storage prefix already holds a different run."""


class DataError(ValueError):
    """The run's data section names no usable examples (a missing file, an unknown task, ...)."""


def _data_fingerprint(doc: RunDocument) -> str:
    blob = json.dumps(doc.spec.data.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_spec(store: ObjectStore, doc: RunDocument) -> bool:
    """Write spec.yaml on first use (returns True); refuse to continue a run whose stored spec differs."""
    text = doc.to_yaml()
    if store.create(RunLayout.spec, text.encode()):
        return True
    stored = store.get(RunLayout.spec).decode()
    if stored != text and not _same_training(stored, doc):
        raise RunConflictError(
            f"{store.uri} already holds run files made from a different spec ({RunLayout.spec} differs). "
            "Resume with the same file, or pick a new metadata.name / storage.uri."
        )
    return False


def prepare_run(store: ObjectStore, doc: RunDocument) -> dict:
    """`ensure_spec` then `prepare`. When preparing fails in a folder this call claimed (bad data), the
    spec.yaml it wrote is removed again, so that the corrected run file is not refused as another run."""
    created = ensure_spec(store, doc)
    try:
        return prepare(store, doc)
    except BaseException:
        if created and not store.exists(RunLayout.manifest):
            store.delete(RunLayout.spec)
        raise


def _same_training(stored_yaml: str, doc: RunDocument) -> bool:
    """True when the stored spec differs from `doc` only outside its training identity (the `compile` section,
    read after training, and operational fields such as `suspend`; see RunSpec.training_identity)."""
    import yaml

    from flowdpo.spec import SpecError, parse_document

    try:
        stored = parse_document(yaml.safe_load(stored_yaml), RunLayout.spec)
    except (SpecError, yaml.YAMLError):
        return False
    return (stored.name, stored.spec.stored_identity()) == (doc.name, doc.spec.stored_identity())


def prepare(store: ObjectStore, doc: RunDocument) -> dict:
    """Write examples/shard-*.jsonl and then examples/MANIFEST.json; a second call does nothing."""
    fingerprint = _data_fingerprint(doc)
    manifest = store.get_json_or(RunLayout.manifest)
    if manifest is not None:
        if manifest["fingerprint"] != fingerprint:
            raise RunConflictError(f"{store.uri}: examples were prepared from a different data spec")
        return manifest
    data = doc.spec.data
    try:
        examples, report = load_examples(data)
    except (ValueError, OSError) as e:
        raise DataError(f"data: {e}") from None
    if not examples:
        raise DataError(f"data: no usable examples ({report.summary()})")
    if report.skipped or len(examples) < data.num_examples:
        short = len(examples) < data.num_examples
        log.warning(
            "data: %s%s",
            report.summary(),
            f"; data.numExamples asks for {data.num_examples}, the source has only {len(examples)} usable" if short else "",
        )
    else:
        log.info("prepared %s", report.summary())
    shards = [examples[i : i + data.shard_size] for i in range(0, len(examples), data.shard_size)]
    for i, shard in enumerate(shards):
        rows = [ex.to_json() for ex in shard]
        created = store.create_jsonl(RunLayout.examples(i), rows)
        # Not created: a previous prepare was interrupted after this shard; it must hold the same examples.
        if not created and store.get_jsonl(RunLayout.examples(i)) != json.loads(json.dumps(rows)):
            raise RunConflictError(f"{RunLayout.examples(i)} exists with other content")
    manifest = {
        "shards": len(shards),
        "examples": len(examples),
        "shardSize": data.shard_size,
        "fingerprint": fingerprint,
        "skipped": report.skipped,
    }
    store.create_json(RunLayout.manifest, manifest)
    return store.get_json(RunLayout.manifest)


def read_shard(store: ObjectStore, shard: int) -> list[Example]:
    return [Example.from_json(r) for r in store.get_jsonl(RunLayout.examples(shard))]
