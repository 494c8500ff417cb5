"""`VLLMBackend`: the `GenerationBackend` protocol over a vLLM OpenAI-compatible server (HTTP).

How it talks to vLLM (verified against vLLM 0.32, see tests/integration/test_vllm_backend.py):

- **Prompts are token ids** (`/v1/completions` with `prompt: [ids]`), and the generated tokens come back as
  ids (`return_token_ids: true` -> `choices[i].token_ids`), so nothing is re-tokenized. Generation stops on
  the flow's EOS ids (`stop_token_ids`); vLLM keeps the stopping token in `token_ids` (it only drops it from
  `text`), so each result ends at and includes the first EOS exactly like `TransformersBackend`.
  Sampling is pinned explicitly (`top_k=0`, `min_p=0`, no penalties) so the server's generation-config
  defaults never change the distribution.
- **Next-token log-probs** (the Stop decision): one request per context with `max_tokens=1`,
  `logprobs=1` and `logprob_token_ids=[candidates]`. vLLM returns the *raw* log-softmax of the model's
  logits (`logprobs_mode=raw_logprobs`, before temperature/penalties) for exactly those ids, keyed
  `"token_id:N"` (`return_tokens_as_token_ids`), so no top-k truncation and no string collisions.
- **Adapters are loaded at run time** (`POST /v1/load_lora_adapter`, server started with
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True --enable-lora --max-lora-rank R`). Each version gets a NEW name
  (`answer-v17`): reloading a name in place mixes weights inside running requests. Requests issued after
  `load_adapter` returns use the new name; the old name is unloaded (and its folder deleted) once the
  requests that were using it have finished (in-flight counts per name). A request chain (`pin`) holds
  the names current when it started for all of its requests (`flowdpo/flow/chains.py`). A name the server
  already knows (it outlived a worker) is unloaded and loaded again, never reloaded with `load_inplace`
  (vLLM then re-reads the adapter on every later request).
- **Every request carries a LoRA adapter.** vLLM 0.32's CPU LoRA path can give a base-model request that is
  batched with LoRA requests the output of the last adapter slot, so the base model (`adapter=None`: the
  untrained flow and zero-shot baselines) and version 0 of each adapter (LoRA B = 0 is the base model) are
  served through an all-zero adapter loaded as `base-zero`.
- Requests go out concurrently (a thread pool here; one thread per in-flight chain in `flow/chains.py`)
  so vLLM's scheduler batches them.

The adapter folder (`adapter_dir`) must be readable by the server under `server_adapter_dir` (the same path
by default; in the cluster an emptyDir mounted into both the worker and the vLLM container).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from flowdpo.flow.served_adapters import BASE_ZERO, ServedAdapters, lora_name
from flowdpo.flow.vllm_protocol import (
    VLLMAdapterError,
    VLLMError,
    VLLMUnavailable,
    choice_logprobs,
    chunk_ids,
    error_message,
    logprob_body,
    sampling_body,
)
from flowdpo.train.adapters import zero_adapter_files

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class VLLMBackend:
    """Flow generation on a vLLM server with runtime-loaded LoRA adapters.

    url:               the server, e.g. http://127.0.0.1:8000 (no /v1)
    eos_ids:           the flow's end-of-sequence ids (`PromptBuilder.eos_ids`)
    adapter_dir:       local folder for adapter versions (written here, read by the server)
    server_adapter_dir: the same folder as the server sees it (default: adapter_dir)
    zero_adapter:      files of the all-zero adapter; default: built from `model_path` + `lora`
    max_concurrency:   HTTP requests in flight at once (vLLM batches them)
    prompts_per_request: contexts sent in one /v1/completions request (a list prompt)
    retry_seconds:     how long to retry a server that does not answer before raising VLLMUnavailable
    name_prefix:       prepended to every served name; set it (e.g. to the run or worker id) when several
                       backends share one server, since each unloads its own old names
    """

    def __init__(
        self,
        url: str,
        eos_ids: frozenset[int] | set[int],
        adapter_dir: str | Path | None = None,
        *,
        model_path: str | None = None,
        lora=None,
        zero_adapter: dict[str, bytes] | None = None,
        server_adapter_dir: str | None = None,
        max_concurrency: int = 64,
        prompts_per_request: int = 1,
        request_timeout: float = 600.0,
        retry_seconds: float = 60.0,
        delete_unloaded: bool = True,
        name_prefix: str = "",
    ):
        self.url = url.rstrip("/")
        self.url = self.url.removesuffix("/v1")
        self.eos_ids = frozenset(eos_ids)
        if adapter_dir is None:
            adapter_dir = tempfile.mkdtemp(prefix="flowdpo-vllm-adapters-")
        self.adapter_dir = Path(adapter_dir)
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        self.server_adapter_dir = server_adapter_dir or str(self.adapter_dir)
        if zero_adapter is None and model_path is None:
            raise ValueError(
                "VLLMBackend needs model_path (+ lora) or zero_adapter files for the base-zero adapter"
            )
        self._zero_source = (zero_adapter, model_path, lora)
        self.max_concurrency = max_concurrency
        self.prompts_per_request = max(1, prompts_per_request)
        self.retry_seconds = retry_seconds
        self.delete_unloaded = delete_unloaded
        if name_prefix and not _NAME_RE.match(name_prefix):
            raise ValueError(f"name_prefix {name_prefix!r}: use letters, digits, '-', '_', '.'")
        self.name_prefix = name_prefix
        self._base_name = name_prefix + BASE_ZERO
        self._names = ServedAdapters(self._base_name)  # which name each request uses; when old ones unload
        self._http = httpx.Client(
            timeout=httpx.Timeout(request_timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="vllm-req")
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one adapter load / (re)registration at a time
        self._paths: dict[str, str] = {}  # served lora name -> folder as the server sees it
        self._local: dict[str, Path] = {}  # served lora name -> local folder
        self._ready = False
        self.tokens_generated = 0
        self.last_load_seconds: dict[str, float] = {}  # adapter -> seconds of its last load_adapter
        self.load_log: list[dict] = []  # every load: adapter, version, name, write_s, load_s, total_s
        self.unloaded: list[str] = []  # served names unloaded so far (oldest first)

    # -- protocol ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Nothing to drop client-side: the server's prefix cache never changes which tokens a request gets."""

    def versions(self) -> dict[str, int]:
        return self._names.versions()

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        if not contexts:
            return []
        if isinstance(adapter, (list, tuple)):
            return self._per_adapter(self.generate, contexts, adapter, max_new_tokens, temperature, top_p)
        name = self._acquire(adapter)
        try:
            return self.generate_as(name, contexts, max_new_tokens, temperature, top_p)
        finally:
            self._release(name)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        if not contexts:
            return []
        if isinstance(adapter, (list, tuple)):
            return self._per_adapter(self.next_token_logprobs, contexts, adapter, token_ids)
        name = self._acquire(adapter)
        try:
            return self.logprobs_as(name, contexts, token_ids)
        finally:
            self._release(name)

    def generate_as(self, name: str, contexts, max_new_tokens, temperature, top_p) -> list[list[int]]:
        """`generate` under the served name `name` (held by the caller: a request or a pin)."""
        body = sampling_body(self.eos_ids, max_new_tokens, temperature, top_p)
        out = [chunk_ids(c, self.eos_ids) for c in self._completions(name, contexts, body)]
        with self._lock:
            self.tokens_generated += sum(len(o) for o in out)
        return out

    def logprobs_as(self, name: str, contexts, token_ids) -> list[list[float]]:
        """`next_token_logprobs` under the served name `name` (held by the caller)."""
        token_ids = [int(t) for t in token_ids]
        choices = self._completions(name, contexts, logprob_body(token_ids))
        return [choice_logprobs(c, token_ids, self.url) for c in choices]

    def pin(self) -> PinnedVersions:
        """The versions served now, held for one request chain (every flow of one example) until
        `PinnedVersions.release`: all its requests use them, and no name it holds is unloaded before."""
        self.ensure_ready()
        names = self._names.pin()
        return PinnedVersions(self, names, self._names.pinned_versions(names))

    def _per_adapter(self, call, contexts, adapter, *args):
        """A call with one adapter per context: one concurrent call per adapter (each keeps its own name
        and in-flight count), results back in context order."""
        from flowdpo.flow.backend import by_adapter

        groups = list(by_adapter(adapter, len(contexts)).items())
        out: list = [None] * len(contexts)
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            futures = [(idx, pool.submit(call, [contexts[i] for i in idx], a, *args)) for a, idx in groups]
            for idx, fut in futures:
                for i, r in zip(idx, fut.result()):
                    out[i] = r
        return out

    def load_adapter(self, name: str, version: int, files: dict[str, bytes]) -> float:
        """Write the adapter folder and load it on the server as `name-v<version>`; new requests use it from
        when this returns. Returns the seconds it took (also in `last_load_seconds[name]` and `load_log`)."""
        if not _NAME_RE.match(name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '-', '_', '.'")
        if "adapter_model.safetensors" not in files or "adapter_config.json" not in files:
            raise VLLMAdapterError(
                f"adapter {name} v{version}: files must hold adapter_config.json and adapter_model.safetensors (got {sorted(files)})"
            )
        self.ensure_ready()
        served = self.name_prefix + lora_name(name, version)
        t0 = time.monotonic()
        with self._load_lock:
            with self._lock:
                already = served in self._paths
            if already:  # this version is loaded (versions are immutable): only switch new requests to it
                t1 = t2 = time.monotonic()
            else:
                local = self._write_folder(served, files)
                t1 = time.monotonic()
                self._register(served, self._server_path(local))
                t2 = time.monotonic()
            if not already:
                with self._lock:
                    self._local[served] = local
            idle = self._names.switch(name, version, served)
        for n in idle:
            self._retire(n)
        total = t2 - t0
        self.last_load_seconds[name] = total
        self.load_log.append(
            {
                "adapter": name,
                "version": version,
                "name": served,
                "write_s": t1 - t0,
                "load_s": t2 - t1,
                "total_s": total,
            }
        )
        log.info("vLLM: serving %s (write %.3f s, load %.3f s)", served, t1 - t0, t2 - t1)
        return total

    # -- readiness -----------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server answers /v1/models (e.g. the vLLM container of the same pod is starting)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                r = self._http.get(f"{self.url}/v1/models", timeout=5.0)
                if r.status_code == 200:
                    return
                last = VLLMError(f"HTTP {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                last = e
            time.sleep(1.0)
        raise VLLMUnavailable(f"vLLM server at {self.url} not ready after {timeout:.0f} s: {last}")

    def ensure_ready(self) -> None:
        """Load the all-zero `base-zero` adapter once (it serves adapter=None and version 0)."""
        if self._ready:
            return
        with self._load_lock:
            if self._ready:
                return
            files, model_path, lora = self._zero_source
            if files is None:
                if lora is None:
                    from flowdpo.spec import LoraSpec

                    lora = LoraSpec()
                files = zero_adapter_files(model_path, lora)
            local = self._write_folder(self._base_name, files)
            self._register(self._base_name, self._server_path(local))
            with self._lock:
                self._local[self._base_name] = local
            self._ready = True

    def served_names(self) -> dict[str, str]:
        """adapter -> the served lora name new requests use (None = the base model via base-zero)."""
        return self._names.current()

    def inflight(self) -> dict[str, int]:
        return self._names.inflight()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- adapters ----------------------------------------------------------------------------------------
    def _server_path(self, local: Path) -> str:
        return str(Path(self.server_adapter_dir) / local.name)

    def _write_folder(self, served: str, files: dict[str, bytes]) -> Path:
        """Write the folder under a temporary name and rename it into place (the server never sees half)."""
        dest = self.adapter_dir / served
        tmp = Path(tempfile.mkdtemp(prefix=f".{served}.tmp-", dir=self.adapter_dir))
        try:
            for fname, data in files.items():
                if "/" in fname or fname.startswith("."):
                    raise ValueError(f"adapter file name {fname!r}")
                (tmp / fname).write_bytes(data)
            tmp.chmod(0o755)
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def _register(self, served: str, server_path: str) -> None:
        r = self._post("/v1/load_lora_adapter", {"lora_name": served, "lora_path": server_path})
        if r.status_code == 400 and "already been loaded" in r.text:
            # The server outlived an earlier worker process and knows this name. Unload it, then load it from
            # our folder (never `load_inplace`: vLLM then re-reads the adapter on every later request). No
            # request of ours uses the name yet: it becomes current only when this load returns.
            log.info("vLLM already serves %s; unloading it and loading it again from %s", served, server_path)
            gone = self._post("/v1/unload_lora_adapter", {"lora_name": served})
            if gone.status_code not in (200, 404):
                raise VLLMAdapterError(
                    f"vLLM at {self.url} could not unload {served} before loading it again: "
                    f"HTTP {gone.status_code}: {error_message(gone)}"
                )
            r = self._post("/v1/load_lora_adapter", {"lora_name": served, "lora_path": server_path})
        if r.status_code != 200:
            msg = error_message(r)
            hint = ""
            if r.status_code == 404:
                hint = f" (the server cannot read {server_path}: is the adapter folder shared with the vLLM container at that path?)"
            elif "max_lora_rank" in msg:
                hint = " (start vLLM with a larger --max-lora-rank, or train a smaller LoRA rank)"
            elif (
                "LORA_UPDATING" in msg
                or r.status_code == 405
                or r.status_code == 404
                and "Not Found" in r.text
            ):
                hint = " (start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)"
            raise VLLMAdapterError(
                f"vLLM at {self.url} could not load adapter {served} from {server_path}: HTTP {r.status_code}: {msg}{hint}"
            )
        with self._lock:
            self._paths[served] = server_path

    def _unload_now(self, served: str, delete: bool) -> None:
        r = self._post("/v1/unload_lora_adapter", {"lora_name": served})
        if r.status_code not in (200, 404):  # 404: the server no longer knows it (restarted): fine
            log.warning("vLLM: unloading %s failed: HTTP %s %s", served, r.status_code, error_message(r))
        with self._lock:
            self._paths.pop(served, None)
            local = self._local.pop(served, None) if delete else None
        if local is not None and self.delete_unloaded:
            shutil.rmtree(local, ignore_errors=True)

    def _retire(self, served: str) -> None:
        """Unload a retired name whose requests have all finished (called with no lock held)."""
        if not self._names.take_retired(served):
            return
        try:
            self._unload_now(served, delete=True)
            self.unloaded.append(served)
            log.info("vLLM: unloaded %s", served)
        except VLLMError as e:  # the name stays loaded on the server; harmless apart from memory
            log.warning("vLLM: could not unload %s: %s", served, e)

    def _acquire(self, adapter: str | None) -> str:
        self.ensure_ready()
        return self._names.acquire(adapter)

    def unpin(self, names: dict[str | None, str]) -> None:
        """A chain ended (`PinnedVersions.release`): unload the retired names it was the last to hold."""
        for idle in self._names.unpin(names):
            self._retire(idle)

    def _release(self, name: str) -> None:
        for idle in self._names.release(name):
            self._retire(idle)

    def _reregister_all(self) -> None:
        """The server forgot our adapters (it restarted): load every name we still use again."""
        with self._load_lock:
            with self._lock:
                names = dict(self._paths)
            log.warning("vLLM at %s lost its adapters (restarted?); re-loading %s", self.url, sorted(names))
            for served, path in names.items():
                self._register(served, path)

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> httpx.Response:
        """POST with retries while the server is unreachable or answers 503 (starting/overloaded)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                r = self._http.post(self.url + path, json=body)
                if r.status_code != 503:
                    return r
                err: Exception | str = f"HTTP 503: {r.text[:200]}"
            except (httpx.TransportError, httpx.RemoteProtocolError) as e:
                err = e
            if time.monotonic() + delay > deadline:
                raise VLLMUnavailable(
                    f"cannot reach the vLLM server at {self.url} (retried {self.retry_seconds:.0f} s): "
                    f"{type(err).__name__ if isinstance(err, Exception) else ''} {err}".rstrip()
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _completions(self, name: str, contexts: list[list[int]], body: dict) -> list[dict]:
        """One choice per context, in order; the contexts are spread over concurrent requests."""
        k = self.prompts_per_request
        groups = [contexts[i : i + k] for i in range(0, len(contexts), k)]

        def one(group: list[list[int]]) -> list[dict]:
            payload = {**body, "model": name, "prompt": group[0] if len(group) == 1 else group}
            for attempt in range(2):
                r = self._post("/v1/completions", payload)
                if r.status_code == 200:
                    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
                    if len(choices) != len(group):
                        raise VLLMError(
                            f"vLLM at {self.url} returned {len(choices)} choices for {len(group)} prompts"
                        )
                    return choices
                if r.status_code == 404 and "does not exist" in r.text and attempt == 0:
                    self._reregister_all()
                    continue
                raise VLLMError(
                    f"vLLM at {self.url}: /v1/completions with {name}: HTTP {r.status_code}: {error_message(r)}"
                )
            raise AssertionError("unreachable")

        if len(groups) == 1:
            return one(groups[0])
        return [c for cs in self._pool.map(one, groups) for c in cs]


class PinnedVersions:
    """One request chain's view of a `VLLMBackend` (the `GenerationBackend` calls, single adapter per call):
    the served names current when it was made, for every request until `release`."""

    def __init__(self, backend: VLLMBackend, names: dict[str | None, str], versions: dict[str, int]):
        self.backend, self.names, self._versions = backend, names, versions
        self._released = False

    def versions(self) -> dict[str, int]:
        return dict(self._versions)

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        return self.backend.generate_as(self.names[adapter], contexts, max_new_tokens, temperature, top_p)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        return self.backend.logprobs_as(self.names[adapter], contexts, token_ids)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.backend.unpin(self.names)
