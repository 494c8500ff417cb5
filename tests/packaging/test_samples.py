"""The sample cluster files in examples/k8s/: what `kubectl apply -f` would do with them, without a cluster.

Each run file must be a valid FlowDPORun three ways -- the run-spec model (`flowdpo run`), the CRD's
openAPIV3Schema (the API server at apply time) and the operator's cluster rules (what it would mark
Failed) -- keep its run in object storage with credentials from the sample Secret, and ask for resources
the API server accepts. The quickstart must train exactly what the embedded quickstart trains, and the
Llama file must carry the paper's settings.
"""

from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft4Validator
from kubernetes.utils import parse_quantity

from flowdpo.spec import (
    API_VERSION,
    KIND,
    CompileSpec,
    FlowSpec,
    LoraSpec,
    RunDocument,
    TrainingSpec,
    load_document,
    quickstart_path,
)
from flowdpo_operator.crd import build_crd
from flowdpo_operator.validation import validate
from tests.support.paths import ROOT

SAMPLES = ROOT / "examples" / "k8s"
RUN_FILES = sorted(
    p.name for p in SAMPLES.glob("*.yaml") if yaml.safe_load(p.read_text()).get("kind") == KIND
)
SECRET_FILE = SAMPLES / "storage-secret.yaml"
OBJECT_STORAGE = ("s3://", "gs://", "az://", "abfs://")


def _raw(name: str) -> dict:
    return yaml.safe_load((SAMPLES / name).read_text())


def _doc(name: str) -> RunDocument:
    return load_document(SAMPLES / name)


def _secret() -> dict:
    return yaml.safe_load(SECRET_FILE.read_text())


def test_the_samples_are_all_here():
    assert RUN_FILES == ["llama3-8b-kueue.yaml", "llama3-8b-metamathqa.yaml", "quickstart.yaml"]
    assert (SAMPLES / "README.md").is_file()


@pytest.mark.parametrize("name", RUN_FILES)
class TestRunFile:
    def test_parses_as_a_run_document(self, name):
        doc = _doc(name)
        assert (doc.api_version, doc.kind, doc.name) == (API_VERSION, KIND, name.removesuffix(".yaml"))

    def test_passes_the_crd_schema(self, name):
        """The openAPIV3Schema the API server validates against (OpenAPI 3.0's boolean exclusive bounds are
        JSON Schema draft 4; nullable and x-kubernetes-* keywords are annotations jsonschema ignores)."""
        schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        errors = sorted(Draft4Validator(schema).iter_errors(_raw(name)), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)

    def test_passes_the_operators_cluster_rules(self, name):
        assert validate(_raw(name)).errors == ()

    def test_keeps_the_run_in_object_storage_with_the_sample_secret(self, name):
        storage = _doc(name).spec.storage
        assert storage.uri.startswith(OBJECT_STORAGE), "pods share a run through object storage, not file://"
        assert "{name}" in storage.uri, "one prefix per run: keep {name} in the URI"
        assert storage.secret_name == _secret()["metadata"]["name"]

    def test_resources_are_quantities_the_api_server_accepts(self, name):
        k8s = _doc(name).spec.kubernetes
        for component in ("prepare", "rollout", "trainer", "compile"):
            res = getattr(k8s, component).resources
            assert set(res) <= {"requests", "limits"}, f"{component}: {set(res)}"
            quantities = {kind: {r: parse_quantity(q) for r, q in res.get(kind, {}).items()} for kind in res}
            for resource, limit in quantities.get("limits", {}).items():
                request = quantities.get("requests", {}).get(resource)
                assert request is None or request <= limit, f"{component}: {resource} request above its limit"
            assert "memory" in quantities.get("limits", {}), f"{component}: no memory limit"


def test_cluster_quickstart_trains_exactly_the_embedded_quickstart():
    """Same identity (model, LoRA, flow, DPO, data, baselines, seeds) as flowdpo/examples/quickstart.yaml:
    only where the run lives may differ, so the cluster and a laptop run can be compared."""
    cluster, local = _doc("quickstart.yaml").spec, load_document(quickstart_path()).spec
    cluster_id, local_id = cluster.training_identity(), local.training_identity()
    cluster_id.pop("storage")
    local_id.pop("storage")
    assert cluster_id == local_id


def test_cluster_quickstart_runs_on_cpus_only():
    spec = _doc("quickstart.yaml").spec
    assert spec.rollout.backend == "transformers"
    k8s = spec.kubernetes
    assert [getattr(k8s, c).gpus for c in ("prepare", "rollout", "trainer", "compile")] == [0, 0, 0, 0]
    assert spec.compile.num_questions <= 100, "compile must stay CPU-sized"


def test_llama_run_has_the_papers_settings():
    """The paper's hyperparameters are RunSpec's defaults; the sample spells them out and must not drift."""
    spec = _doc("llama3-8b-metamathqa.yaml").spec
    assert spec.model.name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (spec.data.source, spec.data.num_examples) == ("metamathqa", 2000)
    assert spec.lora == LoraSpec() and (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (8, 8, 0.05)
    assert spec.flow == FlowSpec() and (spec.flow.chunk_tokens, spec.flow.max_chunks) == (160, 6)
    paper = TrainingSpec()
    t = spec.training
    assert (t.learning_rate, t.beta, t.batch_size, t.grad_clip) == (5e-6, 1.0, 32, 1.0)
    assert (t.learning_rate, t.beta, t.batch_size, t.grad_clip) == (
        paper.learning_rate, paper.beta, paper.batch_size, paper.grad_clip
    )
    assert t.batch_size % t.micro_batch_size == 0, "a 32-pair step must be whole micro-batches"
    assert spec.compile.num_questions == CompileSpec().num_questions == 1500
    assert spec.compile.sft == CompileSpec().sft, "compile SFT: the paper's settings"
    sets = spec.compile.evaluation.resolved_sets(spec.data)
    assert [(s.name, s.split) for s in sets] == [("gsm8k", "test"), ("math", "test")]


def test_llama_run_puts_vllm_rollouts_and_the_trainer_on_gpus():
    spec = _doc("llama3-8b-metamathqa.yaml").spec
    k8s = spec.kubernetes
    assert spec.rollout.backend == "vllm" and spec.rollout.replicas >= 2
    assert (k8s.rollout.gpus, k8s.trainer.gpus, k8s.compile.gpus, k8s.prepare.gpus) == (1, 1, 1, 0)
    assert k8s.vllm.max_lora_rank >= spec.lora.r
    assert k8s.vllm.max_loras >= 2, "Answer and Stop adapters are resident together"


def test_secret_sample_defines_the_storage_keys_as_placeholders():
    secret = _secret()
    assert (secret["apiVersion"], secret["kind"], secret.get("type")) == ("v1", "Secret", "Opaque")
    data = secret["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(data)
    assert all(key.isidentifier() and key.isupper() for key in data), "keys become environment variables"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "REPLACE" in data[key], f"{key}: the sample must hold a placeholder, never a credential"


def test_learning_experiment_control_differs_from_the_main_run_only_in_the_swapped_preferences():
    from flowdpo.spec import load_document

    folder = ROOT / "docs/results/learning-experiment"
    main, control = load_document(folder / "run.yaml"), load_document(folder / "control.yaml")
    assert control.spec.training.shuffle_preferences and not main.spec.training.shuffle_preferences
    assert control.name != main.name
    a = main.spec.model_dump()
    b = control.spec.model_dump()
    b["training"]["shuffle_preferences"] = False
    assert a == b
    assert main.spec.compile.evaluation.flow_samples >= 4
    assert [s.num_questions for s in main.spec.compile.evaluation.sets] == [400]


def test_kueue_run_is_the_papers_run_admitted_by_kueue_with_a_model_cache():
    """llama3-8b-kueue.yaml trains exactly what llama3-8b-metamathqa.yaml trains; on a 1.22+ server its
    children carry the LocalQueue of kueue-setup.yaml, its Jobs start suspended, and the weights come from the
    setup's claim."""
    from flowdpo_operator import builders
    from flowdpo_operator.world import ServerVersion

    kueue, paper = _doc("llama3-8b-kueue.yaml"), _doc("llama3-8b-metamathqa.yaml")
    assert kueue.spec.training_identity() == paper.spec.training_identity()
    setup = {(o["kind"], o["metadata"]["name"]): o for o in _raw("kueue-setup.yaml")["items"]}
    k = kueue.spec.kubernetes
    queue = setup[("LocalQueue", k.queue_name)]
    cluster_queue = setup[("ClusterQueue", queue["spec"]["clusterQueue"])]
    assert ("PersistentVolumeClaim", k.model_cache.claim_name) in setup
    assert ("PriorityClass", k.trainer.priority_class_name) in setup
    (group,) = cluster_queue["spec"]["resourceGroups"]
    (flavor,) = group["flavors"]
    assert ("ResourceFlavor", flavor["name"]) in setup
    quota = {r["name"]: r["nominalQuota"] for r in flavor["resources"]}
    training_gpus = kueue.spec.rollout.replicas * k.rollout.gpus + k.trainer.gpus
    assert quota["nvidia.com/gpu"] >= training_gpus, "the quota must fit the run while it trains"
    owner = builders.Owner(kueue.name, "default", "uid")
    server = ServerVersion(1, 30)
    trainer = builders.job(kueue, owner, "trainer", server)
    assert trainer["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert trainer["spec"]["suspend"] is True and trainer["spec"]["activeDeadlineSeconds"] == 259200
    assert trainer["spec"]["podFailurePolicy"]["rules"][-1]["onExitCodes"]["values"] == [2]
    rollout = builders.rollout_deployment(kueue, owner)
    assert rollout["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-models", "readOnly": True}} in (
        rollout["spec"]["template"]["spec"]["volumes"]
    )
