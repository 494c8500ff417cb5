"""Several LoRA adapters in one forward: every LoRA layer computes the base matmul once for the batch and adds B·A·x only on each adapter's rows; the preallocated KV buffer layer."""

from __future__ import annotations

import contextlib

import torch


class RowAdapters:
    """LoRA adapters applied per row inside one forward: `groups` is a list of (start, end, adapter) row
    ranges (adapter None = the base model). Each LoRA linear layer computes its base matmul for all rows
    and adds scale * (x A^T) B^T on each adapter's rows, from copies of A^T and B^T in the model's dtype made
    once per adapter version. peft's own forward is untouched outside `use()`; the trainer keeps training
    the peft weights, and `invalidate(adapter)` after an update makes the next call copy them again."""

    def __init__(self, model):
        self.layers = _lora_layers(model)
        self._weights: dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}
        self.groups: list[tuple[int, int, str | None]] = []

    def invalidate(self, adapter: str | None = None) -> None:
        if adapter is None:
            self._weights.clear()
        else:
            self._weights.pop(adapter, None)

    def _for(self, adapter: str) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        if adapter not in self._weights:
            out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            with torch.no_grad():
                for layer in self.layers:
                    # No LoRA on this layer, or LoRA B still all zero (an untrained adapter): nothing to add.
                    if adapter not in layer.lora_A or not layer.lora_B[adapter].weight.any():
                        out.append(None)
                        continue
                    dtype = layer.base_layer.weight.dtype
                    a_t = layer.lora_A[adapter].weight.detach().t().to(dtype).contiguous()
                    b_t = (
                        (layer.lora_B[adapter].weight.detach().float() * layer.scaling[adapter])
                        .t()
                        .to(dtype)
                        .contiguous()
                    )
                    out.append((a_t, b_t))
            if not any(adapter in layer.lora_A for layer in self.layers):
                raise KeyError(f"the model has no LoRA adapter named {adapter!r}")
            self._weights[adapter] = out
        return self._weights[adapter]

    @contextlib.contextmanager
    def use(self):
        """Route every LoRA layer through the per-row forward while inside."""
        for i, layer in enumerate(self.layers):
            layer.forward = self._layer_forward(i, layer)
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.forward

    def _layer_forward(self, i: int, layer):
        base = layer.base_layer

        def forward(x, *args, **kwargs):
            out = base(x, *args, **kwargs)
            for start, end, adapter in self.groups:
                if adapter is None:
                    continue
                w = self._for(adapter)[i]
                if w is not None:
                    out[start:end] += (x[start:end] @ w[0]) @ w[1]
            return out

        return forward


def _lora_layers(model) -> list:
    """peft's LoRA linear layers of `model` (peft injects them in place of the adapted nn.Linear)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def unsupported_adapters(model) -> str | None:
    """Why `RowAdapters` cannot serve this model's adapters (None: it can)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        return None
    for m in model.modules():
        if isinstance(m, LoraLayer) and not isinstance(m, LoraLinear):
            return f"LoRA on a {type(m).__name__} layer"
        if isinstance(m, LoraLinear) and any(getattr(m, "use_dora", {}).values()):
            return "DoRA adapters"
    return None


# -- the batch KV buffer ----------------------------------------------------------------------------------
def buffer_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _BufferLayer(DynamicLayer):
        """One layer's view of the batch KV buffer: new keys/values are written at `length`, in place."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
            super().__init__()
            self.keys, self.values, self.length = keys, values, length
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            self.keys[:, :, self.length : self.length + n] = key_states
            self.values[:, :, self.length : self.length + n] = value_states
            self.length += n
            return self.keys[:, :, : self.length], self.values[:, :, : self.length]

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

    return _BufferLayer
