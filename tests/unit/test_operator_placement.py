"""Cluster-facing settings of the children: Kueue labels and initial suspend, Job hygiene per server version,
placement (affinity, priorityClassName, accelerator resource names), and the model cache volume with its
prefetch step. The Job fields of servers newer than the e2e control plane (1.20) are checked here, on the
rendered bodies; e2e/test_placement.py sends the 1.20 bodies to a real API server."""

from __future__ import annotations

import pytest

from flowdpo.cli.main import build_parser
from flowdpo.spec import SpecError
from flowdpo_operator import builders
from flowdpo_operator.placement import HUB_CACHE, MODEL_CACHE_DIR, PREFETCH
from flowdpo_operator.reconcile import RunState, reconcile, steps_of
from flowdpo_operator.validation import validate
from flowdpo_operator.world import Create, JobState, Observed, ObservedJob, ObservedStorage, ServerVersion
from tests.support.operator_support import OWNER, run_body, run_doc

QUEUE = "kueue.x-k8s.io/queue-name"
VLLM = {"model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct"}, "rollout": {"backend": "vllm"}}
OLD, KUEUE_MIN, NEW = ServerVersion(1, 20), ServerVersion(1, 22), ServerVersion(1, 30)


def workloads(doc, server=NEW):
    return [builders.rollout_deployment(doc, OWNER), *(builders.job(doc, OWNER, s, server) for s in builders.JOB_STEPS)]


def pod(body):
    return body["spec"]["template"]["spec"]


class TestKueue:
    @pytest.mark.parametrize("variant", [{}, VLLM])
    def test_queue_and_priority_labels_on_every_workload_and_its_pods_not_on_the_config_map(self, variant):
        doc = run_doc({**variant, "kubernetes": {"queueName": "gpu-queue", "workloadPriorityClass": "high"}})
        for body in workloads(doc):
            for labels in (body["metadata"]["labels"], body["spec"]["template"]["metadata"]["labels"]):
                assert labels[QUEUE] == "gpu-queue", body["metadata"]["name"]
                assert labels["kueue.x-k8s.io/priority-class"] == "high"
        assert QUEUE not in builders.config_map(doc, OWNER)["metadata"]["labels"]

    def test_kueue_jobs_start_suspended_where_the_server_has_job_suspend(self):
        doc = run_doc({"kubernetes": {"queueName": "gpu-queue"}})
        for server, expected in ((KUEUE_MIN, True), (NEW, True), (ServerVersion(1, 21), None)):
            for step in builders.JOB_STEPS:
                assert builders.job(doc, OWNER, step, server)["spec"].get("suspend") is expected, (server, step)
        for step in builders.JOB_STEPS:  # without a queue a Job starts at once
            assert "suspend" not in builders.job(run_doc(), OWNER, step, NEW)["spec"]

    def test_no_kueue_labels_without_a_queue(self):
        for body in workloads(run_doc()):
            assert not any(k.startswith("kueue.x-k8s.io/") for k in body["metadata"]["labels"])

    def test_bad_kueue_settings_name_the_field(self):
        with pytest.raises(SpecError, match="kubernetes.queueName: .*not a DNS label"):
            run_doc({"kubernetes": {"queueName": "Team_A"}})
        with pytest.raises(SpecError, match="workloadPriorityClass needs queueName"):
            run_doc({"kubernetes": {"workloadPriorityClass": "high"}})


JOB_POLICY = {
    "kubernetes": {
        "trainer": {"activeDeadlineSeconds": 86400},
        "jobs": {"ttlSecondsAfterFinished": 3600, "failOnExitCodes": [2, 2, 1]},
    }
}


class TestJobPolicy:
    def test_fields_follow_the_servers_version(self):
        doc = run_doc(JOB_POLICY)
        old = builders.job(doc, OWNER, "trainer", OLD)["spec"]
        assert old["activeDeadlineSeconds"] == 86400  # every version has it
        assert "ttlSecondsAfterFinished" not in old and "podFailurePolicy" not in old  # 1.20 would drop them
        mid = builders.job(doc, OWNER, "trainer", ServerVersion(1, 23))["spec"]
        assert mid["ttlSecondsAfterFinished"] == 3600 and "podFailurePolicy" not in mid
        new = builders.job(doc, OWNER, "trainer", NEW)["spec"]
        assert new["podFailurePolicy"] == {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1, 2]}},
            ]
        }
        assert pod(builders.job(doc, OWNER, "trainer", NEW))["restartPolicy"] == "Never"  # podFailurePolicy needs it
        # The deadline is the trainer's own: other steps have none.
        assert "activeDeadlineSeconds" not in builders.job(doc, OWNER, "prepare", NEW)["spec"]

    def test_disruptions_can_count_again(self):
        doc = run_doc({"kubernetes": {"jobs": {"ignoreDisruptions": False}}})
        assert "podFailurePolicy" not in builders.job(doc, OWNER, "trainer", NEW)["spec"]

    @pytest.mark.parametrize(
        ("patch", "message"),
        [
            ({"jobs": {"ttlSecondsAfterFinished": 5}}, "kubernetes.jobs.ttlSecondsAfterFinished: .*greater than or equal to 60"),
            ({"jobs": {"failOnExitCodes": [0]}}, "kubernetes.jobs.failOnExitCodes: .*1..255"),
            ({"trainer": {"activeDeadlineSeconds": 0}}, "kubernetes.trainer.activeDeadlineSeconds"),
        ],
    )
    def test_bad_values_name_the_field(self, patch, message):
        with pytest.raises(SpecError, match=message):
            run_doc({"kubernetes": patch})

    def test_a_deadline_on_the_rollout_deployment_is_refused(self):
        v = validate(run_body({"kubernetes": {"rollout": {"activeDeadlineSeconds": 60}}}))
        assert any(e.startswith("spec.kubernetes.rollout.activeDeadlineSeconds:") for e in v.errors)


AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]
        }
    }
}
MODEL_CACHE = {"kubernetes": {"modelCache": {"claimName": "hf-models", "subPath": "llama"}}}


class TestPlacement:
    @pytest.mark.parametrize("variant", [{}, VLLM])
    def test_affinity_priority_and_mig_resource_reach_the_pods(self, variant):
        options = {"gpus": 2, "gpuResource": "nvidia.com/mig-3g.40gb", "affinity": AFFINITY,
                   "priorityClassName": "training-high"}
        doc = run_doc({**variant, "kubernetes": {"trainer": options, "rollout": options}})
        for body in (builders.job(doc, OWNER, "trainer"), builders.rollout_deployment(doc, OWNER)):
            spec = pod(body)
            assert spec["affinity"] == AFFINITY and spec["priorityClassName"] == "training-high"
            gpu_containers = [c for c in spec["containers"] if "nvidia.com/mig-3g.40gb" in str(c["resources"])]
            # the vLLM server holds the accelerators, not the worker or the metrics relay next to it
            component = body["metadata"]["labels"]["app.kubernetes.io/component"]
            holder = {"trainer": "trainer", "rollout": "vllm" if variant else "worker"}[component]
            assert [c["name"] for c in gpu_containers] == [holder]
            res = gpu_containers[0]["resources"]
            assert res["requests"] == {"nvidia.com/mig-3g.40gb": "2"} == res["limits"]
            assert "nvidia.com/gpu" not in str(spec)
        assert "affinity" not in pod(builders.job(doc, OWNER, "prepare"))

    @pytest.mark.parametrize(
        ("patch", "message"),
        [
            ({"gpuResource": "gpu"}, "gpuResource: .*not an extended resource name"),
            ({"gpuResource": "kubernetes.io/gpu"}, "gpuResource: .*not an extended resource name"),
            ({"affinity": {"nodeAfinity": {}}}, "affinity: unknown key.*nodeAfinity"),
            ({"priorityClassName": "High Priority"}, "priorityClassName: .*not a DNS label"),
        ],
    )
    def test_bad_values_name_the_field(self, patch, message):
        with pytest.raises(SpecError, match=message):
            run_doc({"kubernetes": {"trainer": patch}})

    def test_the_accelerator_goes_through_gpus_not_resources(self):
        patch = {"gpuResource": "amd.com/gpu", "resources": {"limits": {"amd.com/gpu": "1"}}}
        v = validate(run_body({"kubernetes": {"trainer": patch}}))
        assert any("spec.kubernetes.trainer.resources.limits: set accelerators with" in e for e in v.errors)


class TestModelCache:
    def test_prefetch_job_writes_and_every_model_reader_mounts_read_only_and_offline(self):
        doc = run_doc({**VLLM, **MODEL_CACHE})
        prefetch = builders.job(doc, OWNER, PREFETCH)
        (c,) = pod(prefetch)["containers"]
        args = build_parser().parse_args(c["command"][1:])
        assert args.command == "prefetch" and args.file == builders.RUN_FILE
        assert pod(prefetch)["volumes"][-1] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-models"}}
        mount = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")
        assert mount == {"name": "model-cache", "mountPath": MODEL_CACHE_DIR, "readOnly": False, "subPath": "llama"}
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["HF_HUB_CACHE"] == HUB_CACHE and "HF_HUB_OFFLINE" not in env
        readers = [builders.job(doc, OWNER, "trainer"), builders.rollout_deployment(doc, OWNER)]
        containers = [c for body in readers for c in pod(body)["containers"]]
        relay = next(c for c in containers if c["name"] == "vllm-metrics")
        assert "model-cache" not in str(relay)  # it relays /metrics, it loads nothing
        containers.remove(relay)
        assert sorted(c["name"] for c in containers) == ["trainer", "vllm", "worker"]
        for body in readers:
            claim = next(v for v in pod(body)["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]
            assert claim == {"claimName": "hf-models", "readOnly": True}
        for c in containers:
            mount = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")
            assert mount["readOnly"] is True and mount["subPath"] == "llama"
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert (env["HF_HUB_CACHE"], env["HF_HUB_OFFLINE"]) == (HUB_CACHE, "1"), c["name"]
        for step in ("prepare", "compile", "eval"):  # they fetch datasets from the hub: no offline cache
            assert "model-cache" not in str(pod(builders.job(doc, OWNER, step)))

    def test_no_volume_without_a_cache(self):
        for body in workloads(run_doc(VLLM)):
            assert "model-cache" not in str(body) and "HF_HUB_OFFLINE" not in str(body)

    def test_the_prefetch_step_comes_first_and_is_a_milestone(self):
        doc = run_doc(MODEL_CACHE)
        assert steps_of(doc)[:2] == [PREFETCH, "prepare"]
        no_prefetch = run_doc({"kubernetes": {"modelCache": {"claimName": "hf-models", "prefetch": False}}})
        assert steps_of(no_prefetch)[0] == "prepare"
        state = RunState(OWNER, 1, {}, validate(run_body(MODEL_CACHE)))
        storage = ObservedStorage(reachable=True)
        first = reconcile(state, Observed(storage=storage), now="2030-01-01T00:00:00Z")
        assert [a.body["metadata"]["name"] for a in first.actions if isinstance(a, Create)] == ["demo-config", "demo-weights"]
        assert first.status["phase"] == "Preparing"
        done = Observed(storage=storage, jobs={PREFETCH: ObservedJob(JobState.COMPLETE)})
        second = reconcile(state, done, now="2030-01-01T00:01:00Z")
        assert [a.body["metadata"]["name"] for a in second.actions if isinstance(a, Create)] == ["demo-config", "demo-prepare"]
        cached = next(c for c in second.status["conditions"] if c["type"] == "ModelCached")
        assert cached["status"] == "True"

    @pytest.mark.parametrize("sub_path", ["/abs", "a/../b"])
    def test_sub_path_stays_inside_the_volume(self, sub_path):
        with pytest.raises(SpecError, match="modelCache.subPath"):
            run_doc({"kubernetes": {"modelCache": {"claimName": "c", "subPath": sub_path}}})
