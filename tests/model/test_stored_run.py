"""A run folder written before the package was restructured resumes with today's code
(tests/fixtures/runs/README.md): the stored shard is not redone, training continues from the stored adapter
versions and optimizer state, and the run finishes with every example scored once."""

import shutil

import pytest

from flowdpo.names import ADAPTERS
from flowdpo.run.local import run_local
from flowdpo.spec import load_document
from flowdpo.storage import RunLayout, open_store
from tests.support.paths import FIXTURES

pytestmark = pytest.mark.slow

STORED = FIXTURES / "runs" / "pre-restructure"


def test_a_run_written_before_the_restructuring_resumes(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(STORED, folder)
    run_file = tmp_path / "run.yaml"
    template = (FIXTURES / "runs" / "pre-restructure.yaml.in").read_text()
    run_file.write_text(template.replace("{uri}", f"file://{folder}"))
    store = open_store(f"file://{folder}")
    shard0 = store.get(RunLayout.results(0))
    before = store.get_json(RunLayout.progress)
    assert before["phase"] == "Training" and before["adapterVersions"] == {"answer": 1, "stop": 1}

    final = run_local(load_document(run_file), show_progress=False)

    assert final["phase"] == "Succeeded"
    manifest = store.get_json(RunLayout.manifest)
    assert final["examples"] == manifest["examples"] == 8
    assert store.get(RunLayout.results(0)) == shard0  # the stored shard was not rolled out again
    ids = [r["exampleId"] for s in range(manifest["shards"]) for r in store.get_jsonl(RunLayout.results(s))]
    assert len(ids) == len(set(ids)) == 8
    for a in ADAPTERS:
        # versions went on from the stored v1, with no gap and no version written twice
        versions = sorted({RunLayout.version_of(k) for k in store.list(RunLayout.adapter_versions_prefix(a))})
        assert versions == list(range(1, final["adapterVersions"][a] + 1))
        assert final["pairs"][a]["trained"] == final["pairs"][a]["mined"] >= before["pairs"][a]["mined"]
