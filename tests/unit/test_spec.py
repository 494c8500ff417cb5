"""Run-file validation: good files load, bad ones fail with a message naming the field."""

import pytest
import yaml

from flowdpo.spec import API_VERSION, RunSpec, SpecError, load_document, parse_document, quickstart_path


def doc(**spec):
    return {"apiVersion": API_VERSION, "kind": "FlowDPORun", "metadata": {"name": "r1"}, "spec": spec}


def test_quickstart_is_valid_and_overrides_cpu_sizes():
    d = load_document(quickstart_path())
    assert d.name == "quickstart"
    assert d.spec.flow.chunk_tokens < 160 and d.spec.data.source == "reasoning-gym"
    assert d.storage_uri() == "file://./runs/quickstart"


def test_defaults_are_the_papers_gpu_settings():
    s = RunSpec()
    assert (s.training.learning_rate, s.training.beta, s.training.batch_size, s.training.grad_clip) == (5e-6, 1.0, 32, 1.0)
    assert (s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.target_modules) == (8, 8, 0.05, "all-linear")
    assert (s.flow.chunk_tokens, s.flow.max_chunks) == (160, 6)


def test_camel_case_round_trip():
    d = parse_document(doc(flow={"chunkTokens": 32, "maxChunks": 2}))
    again = parse_document(yaml.safe_load(d.to_yaml()))
    assert again == d and again.spec.flow.chunk_tokens == 32


@pytest.mark.parametrize(
    "body, field, words",
    [
        (doc(flow={"chunkTokens": 0}), "spec.flow.chunkTokens", "greater than or equal to 1"),
        (doc(flow={"chunkTokns": 5}), "spec.flow.chunkTokns", "unknown field"),
        (doc(training={"learningRate": "fast"}), "spec.training.learningRate", "valid number"),
        (doc(data={"source": "jsonl"}), "spec.data", "data.path is required"),
        (doc(data={"source": "imagenet"}), "spec.data.source", "reasoning-gym"),
        (doc(storage={"uri": "ftp://x"}), "spec.storage.uri", "must start with file://"),
        (doc(flow={"stopUserTemplate": "no placeholders"}), "spec.flow.stopUserTemplate", "{problem}"),
        ({**doc(), "kind": "Pod"}, "(document)", "kind must be 'FlowDPORun'"),
        ({**doc(), "apiVersion": "v1"}, "(document)", "apiVersion must be"),
        ({**doc(), "metadata": {"name": "Bad_Name"}}, "(document)", "metadata.name must be a DNS label"),
    ],
)
def test_invalid_documents_name_the_field(body, field, words):
    with pytest.raises(SpecError) as e:
        parse_document(body, "run.yaml")
    msg = str(e.value)
    assert msg.startswith("run.yaml: invalid FlowDPORun")
    assert f"  {field}: " in msg and words in msg


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read run file"):
        load_document(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_document(bad)
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="expected a YAML mapping"):
        load_document(bad)
