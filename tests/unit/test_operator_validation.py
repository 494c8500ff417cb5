"""The operator's validation: spec errors and cluster-only errors each name the field to fix; a running run's
training fields cannot change, its operational fields can."""

from __future__ import annotations

import pytest

from flowdpo_operator import builders
from flowdpo_operator.validation import MAX_NAME_LENGTH, immutable_changes, validate
from tests.support.operator_support import OWNER, merge, run_body, run_doc

VLLM = {"model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct"}, "rollout": {"backend": "vllm"}}


def errors_of(spec_patch=None, **kw):
    result = validate(run_body(spec_patch, **kw))
    assert (result.doc is None) == bool(result.errors)
    return result.errors


@pytest.mark.parametrize(
    "variant",
    [
        {},
        VLLM,
        {"storage": {"uri": "gs://bucket/runs/{name}", "secretName": None}},  # workload identity
        {"storage": {"uri": "az://container/runs/{name}"}},
        {"kubernetes": {"trainer": {"resources": {"limits": {"memory": "64Gi", "cpu": 8}}}}},
        {"device": "cuda"},  # GPUs by default on rollout, trainer and compile
    ],
)
def test_valid_cluster_specs(variant):
    result = validate(run_body(variant))
    assert result.ok and result.doc is not None and result.doc.name == "demo"


def test_schema_errors_name_the_field_and_are_all_reported():
    errs = errors_of({"flow": {"chunkTokens": 0, "stopUserTemplate": "no fields"}, "lora": {"rank": 8}})
    assert any(e.startswith("spec.flow.chunkTokens:") for e in errs)
    assert any(e.startswith("spec.flow.stopUserTemplate:") and "{problem}" in e for e in errs)
    assert any(e.startswith("spec.lora.rank:") and "unknown field" in e for e in errs)


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"storage": {"uri": "file://./runs/{name}"}}, "spec.storage.uri", "object storage"),
        ({"storage": {"uri": "memory://x"}}, "spec.storage.uri", "s3://"),
        ({"storage": {"secretName": None}}, "spec.storage.secretName", "AWS_ACCESS_KEY_ID"),
        ({**VLLM, "model": {"name": "builtin:smollm2-135m-instruct"}}, "spec.model.name", "Hugging Face"),
        ({**VLLM, "lora": {"r": 32}}, "spec.kubernetes.vllm.maxLoraRank", "below spec.lora.r"),
        ({**VLLM, "kubernetes": {"vllm": {"maxLoraRank": 24}}}, "spec.kubernetes.vllm.maxLoraRank", "accepts only"),
        ({**VLLM, "kubernetes": {"metricsPort": 8000}}, "spec.kubernetes.metricsPort", "share the pod's network"),
        ({**VLLM, "kubernetes": {"vllm": {"extraArgs": ["--port=9"]}}}, "spec.kubernetes.vllm.extraArgs", "--port"),
        ({"kubernetes": {"trainer": {"resources": {"cpu": "2"}}}}, "spec.kubernetes.trainer.resources", "requests"),
        ({"kubernetes": {"rollout": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}},
         "spec.kubernetes.rollout.resources.limits", "spec.kubernetes.rollout.gpus"),
        ({"kubernetes": {"prepare": {"resources": {"requests": {"memory": "lots"}}}}},
         "spec.kubernetes.prepare.resources.requests.memory", "quantity"),
        ({"kubernetes": {"compile": {"tolerations": [{"key": "k", "effects": "NoSchedule"}]}}},
         "spec.kubernetes.compile.tolerations[0]", "effects"),
        ({"device": "cuda", "kubernetes": {"trainer": {"gpus": 0}}}, "spec.kubernetes.trainer.gpus", "cuda"),
    ],
)  # fmt: skip
def test_cluster_errors_name_the_field(patch, field, hint):
    errs = errors_of(patch)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{field}:") and hint in errs[0], errs[0]


def test_cuda_worker_gpus_matter_only_for_the_transformers_backend():
    cpu_rollout = {"device": "cuda", "kubernetes": {"rollout": {"gpus": 0}}}
    assert errors_of(cpu_rollout)[0].startswith("spec.kubernetes.rollout.gpus:")
    assert errors_of({**cpu_rollout, **VLLM}) == ()  # a vLLM worker loads only a tokenizer
    cpu_compile = {"device": "cuda", "kubernetes": {"compile": {"gpus": 0}}}
    assert errors_of(cpu_compile)[0].startswith("spec.kubernetes.compile.gpus:")
    assert errors_of(merge(cpu_compile, {"kubernetes": {"runCompile": False}})) == ()  # no compile pods


def test_run_name_must_leave_room_for_child_names():
    ok, long = "r" * MAX_NAME_LENGTH, "r" * (MAX_NAME_LENGTH + 1)
    assert errors_of(name=ok) == ()
    assert len(builders.child_name(ok, "trainer")) == 63
    [err] = errors_of(name=long)
    assert err.startswith("metadata.name:") and f"at most {MAX_NAME_LENGTH}" in err


def test_missing_spec_uses_defaults_and_fails_only_on_cluster_rules():
    body = run_body()
    del body["spec"]
    errs = validate(body).errors
    assert [e.split(":")[0] for e in errs] == ["spec.storage.uri"]


class TestImmutableChanges:
    def stored(self, patch=None):
        return builders.config_map(run_doc(patch), OWNER)["data"]["run.yaml"]

    @pytest.mark.parametrize(
        "patch",
        [
            {"suspend": True},
            {"rollout": {"replicas": 7}},
            {"storage": {"secretName": "other-secret"}},
            {"kubernetes": {"image": "example.org/trainer:2", "trainer": {"gpus": 4}}},
            {"compile": {"numQuestions": 10}},
        ],
    )
    def test_operational_fields_may_change(self, patch):
        assert immutable_changes(self.stored(), run_doc(patch)) == []

    @pytest.mark.parametrize(
        ("patch", "field"),
        [
            ({"lora": {"r": 16}}, "spec.lora.r"),
            ({"training": {"learningRate": 1e-5}}, "spec.training.learningRate"),
            ({"data": {"numExamples": 10}}, "spec.data.numExamples"),
            ({"storage": {"uri": "s3://bucket/elsewhere/{name}"}}, "spec.storage.uri"),
            ({"rollout": {"maxPendingShards": 2}}, "spec.rollout.maxPendingShards"),
        ],
    )
    def test_training_fields_may_not(self, patch, field):
        [err] = immutable_changes(self.stored(), run_doc(patch))
        assert err.startswith(f"{field}: cannot change after the run started")

    def test_nothing_stored_or_unreadable_is_no_constraint(self):
        changed = run_doc({"lora": {"r": 16}})
        assert immutable_changes(None, changed) == []
        assert immutable_changes("::: not yaml", changed) == []
        assert immutable_changes("kind: Other\n", changed) == []


@pytest.mark.parametrize(
    ("allowed", "ok"),
    [
        ((), True),
        (("example.org/",), True),  # a registry path
        (("example.org/trainer:",), False),  # another repository
        (("ghcr.io/",), False),
    ],
)
def test_image_allowlist(allowed, ok):
    """Creating a FlowDPORun creates pods: with an allowlist, images outside it are refused by field."""
    body = run_body({"kubernetes": {"image": "example.org/flowdpo:1"}})
    result = validate(body, allowed)
    assert result.ok == ok
    if not ok:
        expected = (
            "spec.kubernetes.image: 'example.org/flowdpo:1' is not an allowed image (the operator allows: "
            f"{', '.join(allowed)})"
        )
        assert result.errors == (expected,)
