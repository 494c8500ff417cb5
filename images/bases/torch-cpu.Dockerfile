# A stand-in for the trainer image's CUDA base (pytorch/pytorch) where that cannot be pulled: the local Python
# base (scripts/images.sh makes it from Debian packages) plus PyTorch's CPU build of the same version.
# trainer_image/Dockerfile takes it through --build-arg PYTORCH_IMAGE=...; the contract it relies on is written
# there. scripts/images.sh builds this file; its pip configuration (index, CA bundle, a local wheel folder) is
# mounted at build time and stays out of the image.
ARG PYTHON_IMAGE=localhost/flowdpo-base/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
# torch: the version constraints.txt pins (tests/packaging/test_images.py checks they agree). "+cpu" is the
# CPU build's local version label: PyTorch's CPU index (or a wheel folder) serves it, PyPI does not.
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="flowdpo-base/torch-cpu" \
      org.opencontainers.image.description="Debian bookworm Python 3.11 with PyTorch (CPU build)"
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}+cpu" \
 && python -c "import torch; print(torch.__version__)"
