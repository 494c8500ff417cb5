"""The flow's two LoRA adapters on one base model, and their peft checkpoint folders."""

from __future__ import annotations

import io
import json

import torch
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from flowdpo.names import ADAPTERS
from flowdpo.spec import LoraSpec


def lora_config(spec: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def attach_adapters(model, spec: LoraSpec, seed: int = 0):
    """Wrap `model` in peft with the 'answer' and 'stop' adapters. LoRA B starts at zero, so both
    adapters start as the base model (version 0 = the untrained flow)."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(spec), adapter_name=ADAPTERS[0])
    for name in ADAPTERS[1:]:
        peft_model.add_adapter(name, lora_config(spec))
    upcast_adapters(peft_model)
    peft_model.set_adapter(ADAPTERS[0])
    peft_model.eval()
    return peft_model


def upcast_adapters(model) -> None:
    """Keep every LoRA weight in float32 whatever the base dtype (peft < 0.19 left `add_adapter`'s weights
    in bf16, where small Adam updates round away); peft's LoRA forward casts its input to these weights."""
    for n, p in model.named_parameters():
        if "lora_" in n and p.dtype != torch.float32:
            p.data = p.data.float()


def adapter_parameters(model, name: str) -> list[torch.nn.Parameter]:
    params = [p for n, p in model.named_parameters() if "lora_" in n and f".{name}." in n]
    if not params:
        raise ValueError(f"model has no LoRA parameters for adapter {name!r}")
    return params


def activate_for_training(model, name: str) -> None:
    """Make `name` the active adapter and the only trainable parameters."""
    model.set_adapter(name)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n and f".{name}." in n)


def adapter_files(model, name: str) -> dict[str, bytes]:
    """A peft adapter folder as {filename: bytes} (loadable by PeftModel.from_pretrained and vLLM)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    cfg = model.peft_config[name].to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"]) if isinstance(cfg["target_modules"], set) else cfg["target_modules"]
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    cfg["base_model_name_or_path"] = None
    return {
        "adapter_model.safetensors": save_safetensors(state),
        "adapter_config.json": (json.dumps(cfg, indent=1, default=str) + "\n").encode(),
    }


def load_adapter_weights(model, name: str, safetensors_bytes: bytes) -> None:
    state = load_safetensors(safetensors_bytes)
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter {name!r} checkpoint does not match the model: {unexpected[:3]}")


def optimizer_bytes(opt: torch.optim.Optimizer) -> bytes:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def load_optimizer(opt: torch.optim.Optimizer, data: bytes) -> None:
    opt.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def zero_adapter_files(model_path: str, lora) -> dict[str, bytes]:
    """A peft LoRA adapter folder ({filename: bytes}) for `model_path` with every LoRA weight zero: the model
    with it is exactly the base model. `lora` is a `flowdpo.spec.LoraSpec`. The model is instantiated on the
    meta device (shapes only), so no weights are read."""
    import torch
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save as save_safetensors
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(model, lora_config(lora), adapter_name="zero")
    state = {
        k: torch.zeros(tuple(v.shape), dtype=torch.bfloat16)
        for k, v in get_peft_model_state_dict(peft_model, adapter_name="zero").items()
    }
    if not state:
        raise ValueError(f"LoRA target_modules {lora.target_modules!r} match no module of {model_path}")
    cfg = {
        k: (sorted(v) if isinstance(v, set) else v)
        for k, v in peft_model.peft_config["zero"].to_dict().items()
    }
    cfg["base_model_name_or_path"] = None
    return {
        "adapter_model.safetensors": save_safetensors(state),
        "adapter_config.json": (json.dumps(cfg, indent=1, default=str) + "\n").encode(),
    }
