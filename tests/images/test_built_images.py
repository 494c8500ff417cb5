"""The three images, built by scripts/images.sh with podman, RUN: each entrypoint as the non-root UID under the
restricted profile the chart and the operator give their pods (read-only root filesystem, no capabilities, no
privilege escalation, HOME on a scratch volume); the trainer image validates the samples and completes a tiny
run with the model it ships; the rollout image serves the model with runtime LoRA loading, and an adapter
loaded into it gives the log-probs transformers + peft give with the same weights; the operator image carries
no torch and fits its size budget.

Built on the local stand-in bases here (Debian packages, CPU builds of torch and vLLM); the CUDA bases of a
release are swapped in through the same build arguments (docs/images.md).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TINY_RUN
from tests.support.paths import ROOT
from tests.support.podman import podman, require_image
from tests.support.vllm_server import random_lora

APP_UID = "10001"
# The operator image: Debian's Python (~200 MB with apt, perl-base, ...) + kopf/kubernetes/pydantic/obstore
# (~190 MB, kubernetes' generated client alone ~125 MB). Measured 390 MB; the budget leaves room for a
# dependency's growth, not for torch (several hundred MB more even as a CPU build).
OPERATOR_SIZE_BUDGET_MB = 450
# What every run pod gets (operator/flowdpo_operator/builders.py): HOME on an emptyDir at /tmp.
RESTRICTED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
HELP_MARKERS = {"operator": "--all-namespaces", "trainer": "usage: flowdpo", "rollout": "--enable-lora"}


def scratch(tmp_path: Path, name: str) -> Path:
    """A host folder the container's non-root user may write (an emptyDir)."""
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def run(image: str, *args: str, flags: tuple[str, ...] = (), timeout: float = 300):
    return podman("run", "--rm", "--network", "none", *flags, image, *args, check=False, timeout=timeout)


@pytest.mark.parametrize("name", ["operator", "trainer", "rollout"])
def test_entrypoint_runs_as_the_non_root_uid_and_answers_help(name, tmp_path):
    image = require_image(name)
    tmp = scratch(tmp_path, "tmp")
    ids = run(image, "-c", "id -u; id -g", flags=("--entrypoint", "sh"))
    assert ids.stdout.split() == [APP_UID, "0"], ids.stderr
    # As the chart runs it (restricted, read-only root) and as OpenShift runs it (an arbitrary UID in group 0).
    for user in (f"{APP_UID}:0", "1000770000:0"):
        out = run(image, "--help", flags=(*RESTRICTED, "--user", user, "-v", f"{tmp}:/tmp", "-e", "HOME=/tmp"))
        assert out.returncode == 0, f"{image} --help as {user}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        assert HELP_MARKERS[name] in out.stdout


def test_operator_image_ships_no_torch_and_fits_its_size_budget():
    image = require_image("operator")
    probe = (
        "import importlib.util, sys, flowdpo_operator.__main__, flowdpo_operator.handlers, flowdpo.spec;"
        "print(importlib.util.find_spec('torch') is None, sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('torch', 'transformers', 'peft', 'trl')))"
    )
    out = run(image, "-c", probe, flags=("--entrypoint", "python", *RESTRICTED))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[]"]
    size_mb = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6
    assert size_mb <= OPERATOR_SIZE_BUDGET_MB, f"{image}: {size_mb:.0f} MB > budget {OPERATOR_SIZE_BUDGET_MB} MB"


def test_trainer_image_validates_the_samples_and_completes_a_tiny_run_with_its_own_model(tmp_path):
    image = require_image("trainer")
    work = scratch(tmp_path, "tmp")
    pod = (*RESTRICTED, "-v", f"{work}:/tmp", "-e", "HOME=/tmp", "-v", f"{ROOT / 'examples' / 'k8s'}:/samples:ro",
           "-v", f"{ROOT / 'flowdpo' / 'examples'}:/embedded:ro")
    for sample in ["/embedded/quickstart.yaml", "/samples/quickstart.yaml", "/samples/llama3-8b-metamathqa.yaml"]:
        out = run(image, "validate", sample, flags=pod)
        assert out.returncode == 0, f"flowdpo validate {sample}:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
    # No network: the embedded model and data come from the image; the model is converted into HOME's cache.
    spec = work / "tiny.yaml"
    spec.write_text(TINY_RUN.format(name="tiny", n=4, shard=2, baselines="false", uri="file:///tmp/runs/tiny"))
    out = run(image, "run", "/tmp/tiny.yaml", flags=(*pod, "-e", "HF_HUB_OFFLINE=1", "-e", "FLOWDPO_TORCH_THREADS=1"),
              timeout=900)
    assert out.returncode == 0, f"flowdpo run in {image}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    progress = json.loads((work / "runs" / "tiny" / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["examples"] == 4
    assert progress["adapterVersions"]["answer"] >= 1 or progress["last"]["answer"]["pairs"] == 0


# Inside the vLLM container: the model, and the adapter folder the worker writes and the server reads (an
# emptyDir at /adapters in a rollout pod, operator/flowdpo_operator/builders.py).
SERVED_MODEL, SERVED_ADAPTERS = "/models/smollm2", "/adapters"


class RolloutServer:
    """The rollout image's vLLM server, started the way the operator's vLLM container starts it (flags,
    restricted security context, HOME and /dev/shm on scratch), on the host network for the test to reach."""

    def __init__(self, image: str, model_dir: str, adapter_dir: Path, home: Path):
        from tests.support.vllm_server import SERVED_NAME, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"flowdpo-test-vllm-{uuid.uuid4().hex[:8]}"
        self.argv = [
            "run", "--detach", "--name", self.name, "--network", "host", *RESTRICTED, "--user", f"{APP_UID}:0",
            "--shm-size", "1g", "-v", f"{home}:/tmp", "-e", "HOME=/tmp", "-e", "HF_HUB_OFFLINE=1",
            "-e", "VLLM_CPU_KVCACHE_SPACE=1",
            "-v", f"{model_dir}:{SERVED_MODEL}:ro", "-v", f"{adapter_dir}:{SERVED_ADAPTERS}:ro",
            image, "--model", SERVED_MODEL, "--served-model-name", SERVED_NAME, "--enable-lora",
            "--max-lora-rank", "8", "--max-loras", "4", "--dtype", "bfloat16", "--max-model-len", "2048",
            "--host", "127.0.0.1", "--port", str(self.port), "--disable-uvicorn-access-log",
        ]  # fmt: skip

    def logs(self) -> str:
        out = podman("logs", "--tail", "300", self.name, check=False)
        return out.stdout + out.stderr

    def __enter__(self):
        podman(*self.argv)
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
            if state != "true":
                raise AssertionError(f"the vLLM container exited during startup:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"the vLLM container was not ready after 420 s:\n{self.logs()}")

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the server's side of a failure, in the test report
            print(f"--- {self.name} ---\n{self.logs()}")
        podman("rm", "--force", "--time", "5", self.name, check=False)


def test_rollout_image_serves_the_model_and_a_runtime_loaded_adapter_matches_peft(tmp_path):
    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.flow.vllm_backend import VLLMBackend
    from flowdpo.models import load_base_model, resolve_model_path
    from flowdpo.spec import FlowSpec, LoraSpec, ModelSpec
    from flowdpo.train.adapters import attach_adapters

    image = require_image("rollout")
    model_dir = resolve_model_path(ModelSpec())
    # The container reads the model as UID 10001: a world-readable copy (a cache converted before
    # flowdpo/models.py made its files world-readable has 0600 weights).
    served = shutil.copytree(model_dir, tmp_path / "model")
    for f in served.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    model, tok = load_base_model(ModelSpec())
    model = attach_adapters(model, LoraSpec(), seed=0)
    prompts = PromptBuilder(tok, FlowSpec(chunk_tokens=16, max_chunks=3, temperature=0.7))
    with RolloutServer(image, str(served), adapters, scratch(tmp_path, "home")) as server:
        backend = VLLMBackend(server.url, prompts.eos_ids, adapters, model_path=model_dir, lora=LoraSpec(),
                              server_adapter_dir=SERVED_ADAPTERS)
        try:
            contexts = [prompts.answer_prompt(q) for q in ("What is 2 + 3?", "What is 7 * 6?")]
            cands = list(range(30, 60))
            v0 = backend.next_token_logprobs(contexts, "answer", cands)
            backend.load_adapter("answer", 1, random_lora(model, "answer", seed=1, std=0.08))
            v1 = backend.next_token_logprobs(contexts, "answer", cands)
            want = TransformersBackend(model, tok, prompts.eos_ids).next_token_logprobs(contexts, "answer", cands)
            text = backend.generate(contexts, "answer", 8, 0.0, 1.0)
        finally:
            backend.close()
    assert max(abs(a - b) for x, y in zip(v1, v0) for a, b in zip(x, y)) > 0.5, "the loaded adapter changed nothing"
    # bf16 on two engines (vLLM's CPU kernels vs torch): within the tolerance tests/integration/test_vllm_backend.py
    # explains, 0.3 per log-prob, doubled for an adapter's extra rounding.
    assert max(abs(a - b) for x, y in zip(v1, want) for a, b in zip(x, y)) < 0.6
    assert all(len(t) > 0 for t in text)


def test_images_are_tagged_as_the_chart_and_the_operator_default_to():
    from flowdpo.spec.cluster import KubernetesSpec

    chart = yaml.safe_load((ROOT / "charts" / "flowdpo" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "flowdpo" / "values.yaml").read_text())
    assert require_image("operator") == f"{values['image']['repository']}:{chart['appVersion']}"
    k = KubernetesSpec()
    assert require_image("trainer") == k.image
    assert require_image("rollout") == k.vllm.image
