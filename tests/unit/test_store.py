"""The object-store wrapper on a local folder (the same code serves S3/GCS/Azure through obstore)."""

import threading

import pytest

from flowdpo.run.prepare import RunConflictError, ensure_spec, prepare, read_shard
from flowdpo.spec import parse_document
from flowdpo.storage import RunLayout, StoreError, open_store


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/run")


def test_put_get_list_delete(store):
    store.put("a/x.json", b"1")
    store.put_json("a/y.json", {"k": 1})
    assert store.get("a/x.json") == b"1" and store.get_json("a/y.json") == {"k": 1}
    assert store.list("a/") == ["a/x.json", "a/y.json"]
    store.delete("a/x.json")
    assert not store.exists("a/x.json") and store.exists("a/y.json")
    with pytest.raises(KeyError):
        store.get("a/x.json")
    assert store.get_json_or("missing.json", "dflt") == "dflt"


def test_atomic_create_has_exactly_one_winner(store):
    wins = []

    def attempt(i):
        wins.append(store.create("claims/shard-000001.json", str(i).encode()))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    winner = int(store.get("claims/shard-000001.json"))
    assert 0 <= winner < 16


def test_relative_file_uri_and_bad_scheme(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("file://./runs/rel")
    s.put("k", b"v")
    assert (tmp_path / "runs" / "rel" / "k").read_bytes() == b"v"
    with pytest.raises(StoreError, match="unsupported storage URI"):
        open_store("ftp://host/x")


def test_folder_round_trip(store, tmp_path):
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    store.put_folder(RunLayout.adapter("answer", 3), src)
    out = store.get_folder(RunLayout.adapter("answer", 3), tmp_path / "copy")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert RunLayout.version_of(store.list("adapters/answer/")[0]) == 3


def _doc(tmp_path, n=10, shard=4, seed=0):
    return parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "p"},
            "spec": {"data": {"numExamples": n, "shardSize": shard, "seed": seed}, "storage": {"uri": f"file://{tmp_path}/p"}},
        }
    )


def test_prepare_writes_shards_once_and_refuses_a_different_spec(tmp_path):
    doc = _doc(tmp_path)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    m = prepare(store, doc)
    assert (m["examples"], m["shards"]) == (10, 3)
    shards = [read_shard(store, i) for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 2]
    ids = [e.id for s in shards for e in s]
    assert len(set(ids)) == 10
    assert prepare(store, doc) == m  # idempotent
    other = _doc(tmp_path, seed=1)
    with pytest.raises(RunConflictError, match="different spec"):
        ensure_spec(store, other)
    with pytest.raises(RunConflictError, match="different data spec"):
        prepare(store, other)


def test_a_copied_run_folder_resumes_but_another_run_is_refused(tmp_path):
    """spec.yaml is checked against the run file on resume: the folder's own location may differ (a copied or
    moved run folder), what training computes may not."""
    import shutil

    from flowdpo.spec import load_document, quickstart_path

    doc = load_document(quickstart_path())
    doc.spec.storage.uri = f"file://{tmp_path}/a"
    ensure_spec(open_store(doc.storage_uri()), doc)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = doc.model_copy(deep=True)
    moved.spec.storage.uri = f"file://{tmp_path}/b"
    ensure_spec(open_store(moved.storage_uri()), moved)  # no conflict
    other = moved.model_copy(deep=True)
    other.spec.training.learning_rate *= 2
    with pytest.raises(RunConflictError, match="different spec"):
        ensure_spec(open_store(other.storage_uri()), other)
