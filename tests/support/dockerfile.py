"""The three Dockerfiles as data: a small Dockerfile reader (comments, continuations, ARG/ENV scoping, FROM ... AS, COPY/RUN flags; no heredocs) and the checks the image tests apply to every file (pins, variables, user, pip, build-context sources)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.support.paths import ROOT

DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "trainer": ROOT / "trainer_image" / "Dockerfile",
    "rollout": ROOT / "rollout_image" / "Dockerfile",
}
# The programs each image starts and its default flags (the chart and the operator override the flags).
ENTRYPOINTS = {
    "operator": (["flowdpo-operator"], ["--all-namespaces"]),
    "trainer": (["flowdpo"], ["--help"]),
    "rollout": (["python3", "-m", "vllm.entrypoints.openai.api_server"], ["--help"]),
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
                    if "==" not in a and not re.fullmatch(r"/tmp/flowdpo-wheels/flowdpo-\*\.whl", a)
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
