"""The operator's pure builders: every child of a FlowDPORun follows the shared contract (names, labels,
owner, commands the `flowdpo` CLI accepts, ports, GPUs, Secret, security) across spec variants."""

from __future__ import annotations

import shlex

import pytest
import yaml

from flowdpo.cli.main import build_parser
from flowdpo.spec import API_VERSION, KIND, parse_document
from flowdpo_operator import builders
from flowdpo_operator.builders import ADAPTER_DIR, RUN_FILE, SPEC_HASH_ANNOTATION
from tests.support.operator_support import NAMESPACE, OWNER, UID, run_doc

VLLM = {"model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct"}, "rollout": {"backend": "vllm"}}
SCHEDULING = {
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def all_children(doc):
    return [
        builders.config_map(doc, OWNER),
        builders.rollout_deployment(doc, OWNER),
        *(builders.job(doc, OWNER, step) for step in builders.JOB_STEPS),
    ]


def pod_spec(body):
    return body["spec"]["template"]["spec"]


def container(body, name):
    return next(c for c in pod_spec(body)["containers"] if c["name"] == name)


def parse_flowdpo_command(command):
    """The `flowdpo` CLI's own parser accepts the container's command (flags and all)."""
    assert command[0] == "flowdpo", command
    return build_parser().parse_args(command[1:])


@pytest.mark.parametrize("variant", [{}, VLLM, {"storage": {"secretName": None, "uri": "gs://b/runs/{name}"}}])
class TestEveryChild:
    def test_metadata_owner_and_labels(self, variant):
        doc = run_doc(variant)
        for body in all_children(doc):
            meta = body["metadata"]
            component = meta["labels"]["app.kubernetes.io/component"]
            assert meta["name"] == f"demo-{component}" and meta["namespace"] == NAMESPACE
            assert meta["ownerReferences"] == [
                {"apiVersion": API_VERSION, "kind": KIND, "name": "demo", "uid": UID, "controller": True}
            ]
            assert meta["labels"] == {
                "app.kubernetes.io/name": "flowdpo",
                "app.kubernetes.io/instance": "demo",
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": "flowdpo-operator",
                "flowdpo.dev/run": "demo",
            }
            assert meta["annotations"][SPEC_HASH_ANNOTATION] == builders.spec_hash(body)

    def test_pods_have_no_api_access_run_as_non_root_and_read_the_run_file(self, variant):
        doc = run_doc(variant)
        secret = doc.spec.storage.secret_name
        for body in all_children(doc)[1:]:
            spec = pod_spec(body)
            assert body["spec"]["template"]["metadata"]["labels"] == body["metadata"]["labels"]
            assert spec["automountServiceAccountToken"] is False
            assert spec["securityContext"]["runAsUser"] == 10001
            assert restricted_problems(spec) == []
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert volumes["config"]["configMap"]["name"] == "demo-config"
            assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
            for c in spec["containers"]:
                assert c["command"], "the e2e kubelet runs `command`: every container sets it"
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert {"name": "HOME", "value": "/tmp"} in c["env"]
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts["/etc/flowdpo"] == "config" and mounts["/tmp"] == "scratch"
                if c["name"] == "vllm":  # no storage credentials; HF_TOKEN alone, for gated model downloads
                    assert not c.get("envFrom")
                    tokens = [e for e in c["env"] if e["name"] == "HF_TOKEN"]
                    assert tokens == ([{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                        "name": secret, "key": "HF_TOKEN", "optional": True}}}] if secret else [])
                else:
                    assert c["envFrom"] == ([{"secretRef": {"name": secret}}] if secret else [])


# The Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards),
# as checks on a rendered pod spec.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_problems(spec: dict) -> list[str]:
    problems = []
    pod = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {v['name']}: {sorted(kinds)}")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc, name = c.get("securityContext", {}), c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities")
        if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_restricted_check_reports_what_the_profile_forbids():
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True}, "ports": [{"hostPort": 80}]}]}
    assert restricted_problems(bad) == [
        "hostNetwork", "volume h: ['hostPath']", "c: privileged", "c: allowPrivilegeEscalation", "c: capabilities",
        "c: runAsNonRoot", "c: seccompProfile", "c: hostPort",
    ]


def test_user_strings_reach_container_args_literally():
    """Kubernetes expands $(VAR) in command/args: a model name must not read the pod's environment."""
    doc = run_doc({**VLLM, "model": {"name": "org/model$(AWS_SECRET_ACCESS_KEY)"}})
    vllm = next(c for c in pod_spec(builders.rollout_deployment(doc, OWNER))["containers"] if c["name"] == "vllm")
    assert "org/model$$(AWS_SECRET_ACCESS_KEY)" in vllm["command"]
    assert "--host" in vllm["command"] and vllm["command"][vllm["command"].index("--host") + 1] == "127.0.0.1"


class TestConfigMap:
    @pytest.mark.parametrize("variant", [{}, VLLM, {"suspend": True, "kubernetes": {"runCompile": False}}])
    def test_run_yaml_is_the_run_document_the_workers_parse(self, variant):
        doc = run_doc(variant)
        body = builders.config_map(doc, OWNER)
        assert list(body["data"]) == ["run.yaml"]
        stored = yaml.safe_load(body["data"]["run.yaml"])
        assert stored["metadata"] == {"name": "demo"}  # no uid/namespace noise: the workers' view
        parsed = parse_document(stored)
        assert "suspend" not in stored["spec"]  # a lifecycle switch, not configuration of the pods
        assert parsed.spec == doc.spec.model_copy(update={"suspend": False}) and parsed.name == "demo"
        assert parsed.storage_uri() == "s3://bucket/runs/demo"
        # Every default is written out, so later operator versions cannot change a running run.
        assert stored["spec"]["flow"]["chunkTokens"] == doc.spec.flow.chunk_tokens


@pytest.mark.parametrize("step", builders.JOB_STEPS)
class TestJob:
    def test_command_is_accepted_by_the_flowdpo_cli(self, step):
        body = builders.job(run_doc(), OWNER, step)
        c = container(body, step)
        args = parse_flowdpo_command(c["command"])
        assert args.file == RUN_FILE
        assert c["command"][1] == ("prefetch" if step == "weights" else step)
        if step == "trainer":
            assert args.metrics_port == 9400
            assert c["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
        else:
            assert "ports" not in c
        if step in ("compile", "eval"):
            assert args.no_progress

    def test_job_spec(self, step):
        body = builders.job(run_doc({"kubernetes": {"backoffLimit": 5}}), OWNER, step)
        assert body["apiVersion"] == "batch/v1" and body["kind"] == "Job"
        assert body["spec"]["backoffLimit"] == 5
        assert body["spec"]["completions"] == 1 and body["spec"]["parallelism"] == 1
        assert pod_spec(body)["restartPolicy"] == "Never"
        assert "selector" not in body["spec"]  # generated by the API server

    @pytest.mark.parametrize("gpus", [0, 1, 8])
    def test_gpus_resources_and_scheduling_come_from_the_steps_pod_options(self, step, gpus):
        section = {"weights": "prepare", "prepare": "prepare", "trainer": "trainer", "compile": "compile", "eval": "compile"}[step]
        options = {"gpus": gpus, "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}, **SCHEDULING}
        doc = run_doc({"kubernetes": {section: options, "imagePullSecrets": ["regcred"]}})
        body = builders.job(doc, OWNER, step)
        c = container(body, step)
        expected_requests = {"cpu": "2", "memory": "8Gi"} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
        assert c["resources"].get("requests") == expected_requests
        assert c["resources"].get("limits") == ({"nvidia.com/gpu": str(gpus)} if gpus else None)
        spec = pod_spec(body)
        assert spec["nodeSelector"] == SCHEDULING["nodeSelector"]
        assert spec["tolerations"] == SCHEDULING["tolerations"]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert c["image"] == doc.spec.kubernetes.image
        # GPU pods get a memory-backed /dev/shm (torch, NCCL); CPU pods do not need one.
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"]) == (gpus > 0)

    def test_other_steps_pod_options_do_not_leak(self, step):
        doc = run_doc({"kubernetes": {"rollout": {"gpus": 4}, "trainer": {"gpus": 2}, "compile": {"gpus": 0},
                                      "prepare": {"gpus": 0}}})  # fmt: skip
        c = container(builders.job(doc, OWNER, step), step)
        expected = {"trainer": "2"}.get(step)
        assert c["resources"].get("limits", {}).get("nvidia.com/gpu") == expected

    def test_no_scheduling_keys_when_unset(self, step):
        spec = pod_spec(builders.job(run_doc(), OWNER, step))
        assert not {"nodeSelector", "tolerations", "imagePullSecrets"} & set(spec)


class TestRolloutDeployment:
    @pytest.mark.parametrize("replicas", [1, 3])
    @pytest.mark.parametrize("suspend", [False, True])
    def test_replicas_follow_spec_and_suspend(self, replicas, suspend):
        body = builders.rollout_deployment(run_doc({"rollout": {"replicas": replicas}, "suspend": suspend}), OWNER)
        assert body["spec"]["replicas"] == (0 if suspend else replicas)

    @pytest.mark.parametrize("variant", [{}, VLLM])
    def test_selector_matches_the_template_and_strategy_is_recreate(self, variant):
        body = builders.rollout_deployment(run_doc(variant), OWNER)
        selector = body["spec"]["selector"]["matchLabels"]
        assert selector == {"flowdpo.dev/run": "demo", "app.kubernetes.io/component": "rollout"}
        assert selector.items() <= body["spec"]["template"]["metadata"]["labels"].items()
        assert body["spec"]["strategy"] == {"type": "Recreate"}
        assert pod_spec(body)["restartPolicy"] == "Always"

    @pytest.mark.parametrize("gpus", [0, 1, 8])
    def test_transformers_backend_worker_holds_the_gpus(self, gpus):
        body = builders.rollout_deployment(run_doc({"kubernetes": {"rollout": {"gpus": gpus, **SCHEDULING}}}), OWNER)
        assert [c["name"] for c in pod_spec(body)["containers"]] == ["worker"]
        worker = container(body, "worker")
        args = parse_flowdpo_command(worker["command"])
        assert (args.func.__name__, args.file, args.metrics_port) == ("cmd_worker", RUN_FILE, 9400)
        assert args.vllm_url is None and args.adapter_dir is None
        assert worker["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
        assert worker["resources"].get("limits", {}).get("nvidia.com/gpu") == (str(gpus) if gpus else None)
        assert pod_spec(body)["nodeSelector"] == SCHEDULING["nodeSelector"]

    @pytest.mark.parametrize("gpus", [0, 1, 8])
    def test_vllm_backend_server_and_worker_share_the_adapter_dir(self, gpus):
        doc = run_doc(
            VLLM
            | {"kubernetes": {"metricsPort": 9500, "rollout": {"gpus": gpus}, "vllm": {
                "image": "example.org/rollout:1", "port": 8100, "maxLoras": 6, "maxLoraRank": 32,
                "gpuMemoryUtilization": 0.9, "extraArgs": ["--max-model-len", "4096"]}}}
        )  # fmt: skip
        body = builders.rollout_deployment(doc, OWNER)
        spec = pod_spec(body)
        assert [c["name"] for c in spec["containers"]] == ["vllm", "worker", "vllm-metrics"]
        vllm, worker = container(body, "vllm"), container(body, "worker")
        # vLLM's own /metrics leave the pod through a read-only relay on a port of its own.
        relay = container(body, "vllm-metrics")
        relay_args = parse_flowdpo_command(relay["command"])
        assert relay_args.upstream == "http://127.0.0.1:8100/metrics" and relay_args.metrics_port == 9401
        assert relay["ports"] == [{"name": "vllm-metrics", "containerPort": 9401, "protocol": "TCP"}]

        args = parse_flowdpo_command(worker["command"])
        assert args.vllm_url == "http://127.0.0.1:8100" and args.adapter_dir == ADAPTER_DIR
        assert args.metrics_port == 9500
        assert {"name": "FLOWDPO_SERVER_ADAPTER_DIR", "value": ADAPTER_DIR} in worker["env"]
        assert worker["resources"] == {}  # the pod's GPUs belong to the server

        cmd = vllm["command"]
        assert cmd[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        flags = shlex.join(cmd)
        for expected in ("--model meta-llama/Meta-Llama-3-8B-Instruct", "--port 8100", "--enable-lora",
                         "--max-loras 6", "--max-lora-rank 32", "--gpu-memory-utilization 0.9"):  # fmt: skip
            assert expected in flags
        assert cmd[-2:] == ["--max-model-len", "4096"]  # extraArgs last, verbatim
        assert ("--tensor-parallel-size 8" in flags) == (gpus == 8)
        assert vllm["image"] == "example.org/rollout:1"
        assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]
        # Bound to 127.0.0.1 (the runtime-LoRA admin API stays inside the pod), probed from inside it.
        assert "--host 127.0.0.1" in flags and "ports" not in vllm
        probe = vllm["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["python3", "-c"] and "http://127.0.0.1:8100/health" in probe[2]
        assert vllm["resources"].get("limits", {}).get("nvidia.com/gpu") == (str(gpus) if gpus else None)
        assert "envFrom" not in vllm  # no storage credentials in the server; HF_TOKEN only (gated models)
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "flowdpo-storage", "key": "HF_TOKEN",
                                                                   "optional": True}}} in vllm["env"]

        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["adapters"] == {"name": "adapters", "emptyDir": {}}
        for c in (vllm, worker):
            assert {"name": "adapters", "mountPath": ADAPTER_DIR} in c["volumeMounts"]

    def test_explicit_tensor_parallelism_in_extra_args_wins(self):
        doc = run_doc(VLLM | {"kubernetes": {"rollout": {"gpus": 4}, "vllm": {"extraArgs": ["--tensor-parallel-size=2"]}}})
        cmd = container(builders.rollout_deployment(doc, OWNER), "vllm")["command"]
        assert "--tensor-parallel-size" not in cmd and cmd[-1] == "--tensor-parallel-size=2"


class TestSpecHash:
    def test_stable_and_sensitive_to_content(self):
        doc = run_doc()
        a, b = builders.rollout_deployment(doc, OWNER), builders.rollout_deployment(doc, OWNER)
        assert a == b
        suspended = builders.rollout_deployment(run_doc({"suspend": True}), OWNER)
        assert suspended["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != a["metadata"]["annotations"][SPEC_HASH_ANNOTATION]

    def test_ignores_server_fields_of_the_annotation_and_resource_version(self):
        body = builders.config_map(run_doc(), OWNER)
        seen = {**body, "metadata": {**body["metadata"], "resourceVersion": "123"}}
        assert builders.spec_hash(seen) == body["metadata"]["annotations"][SPEC_HASH_ANNOTATION]


def test_unknown_step_is_an_error():
    with pytest.raises(ValueError, match="unknown step"):
        builders.job(run_doc(), OWNER, "deploy")
