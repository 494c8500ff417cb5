"""podman, pointed at the project's image storage (scripts/images.sh keeps it under the cache), for the tests that
run the built images (tests/images, e2e/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

import pytest

from tests.support.paths import ROOT

IMAGES = ("operator", "trainer", "rollout")


@cache
def podman_env() -> dict[str, str] | None:
    """The environment that points podman at the project's image storage (scripts/images.sh env), or None
    when podman is not installed."""
    if shutil.which("podman") is None:
        return None
    out = subprocess.run(["bash", str(ROOT / "scripts" / "images.sh"), "env"], check=True, capture_output=True,
                         text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = podman_env()
    if env is None:
        raise RuntimeError("podman is not installed: run `bash scripts/images.sh setup`")
    return subprocess.run(["podman", *args], env={**os.environ, **env}, check=check, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_build(timeout: float = 3600) -> None:
    """When scripts/test.sh builds the images beside the tests (FLOWDPO_IMAGES_BUILD_STATUS names its status
    file), wait until the build ended; a failed build fails the test with the tail of its log."""
    status = os.environ.get("FLOWDPO_IMAGES_BUILD_STATUS")
    if not status:
        return
    deadline = time.monotonic() + timeout
    path = Path(status)
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            pytest.fail(f"the image build (scripts/images.sh build) did not end within {timeout:.0f} s", pytrace=False)
        time.sleep(2)
    if path.read_text().strip() != "done":
        log = Path(os.environ.get("FLOWDPO_IMAGES_BUILD_LOG", status + ".log"))
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else "(no log)"
        pytest.fail(f"the image build failed (scripts/images.sh build):\n{tail}", pytrace=False)


def built_images() -> dict[str, str]:
    """{operator|trainer|rollout: image reference} of the project's images that exist in podman's storage."""
    wait_for_build()
    env = podman_env()
    if env is None:
        return {}
    refs = {k.removeprefix("FLOWDPO_IMAGE_").lower(): v for k, v in env.items() if k.startswith("FLOWDPO_IMAGE_")}
    return {name: ref for name, ref in refs.items() if podman("image", "exists", ref, check=False).returncode == 0}


@cache
def image_user(ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Config.User}}", ref).stdout.strip()


def require_image(name: str) -> str:
    """The reference of a built image; fails (never skips) when it is missing: these tests exist to run it."""
    wait_for_build()
    if podman_env() is None:
        pytest.fail("podman is not installed: run `bash scripts/images.sh setup`", pytrace=False)
    ref = podman_env()[f"FLOWDPO_IMAGE_{name.upper()}"]
    if podman("image", "exists", ref, check=False).returncode != 0:
        pytest.fail(f"{ref} is not built: run `bash scripts/images.sh build {name}`", pytrace=False)
    return ref
