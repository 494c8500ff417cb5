"""Reading a run file's YAML the way Kubernetes does, and safely.

- YAML 1.2 numbers: `1e-4` is a float (PyYAML's YAML 1.1 rules read it as a string, kubectl reads a float),
  so `flowdpo run` and `kubectl apply` accept the same files.
- Aliases are resolved by reference, so a small file can describe a huge document ("billion laughs"); the
  expanded size is computed on the node graph first and a file over MAX_NODES is refused before anything is
  built from it.
- A key given twice in one mapping is refused (PyYAML keeps the last silently, so a second `seed:` further down
  would override the first without a word); kubectl's strict field validation refuses it too.
- The file must be UTF-8.
"""

from __future__ import annotations

import re

import yaml

# A run file has a few hundred nodes; this bounds what one may expand to.
MAX_NODES = 100_000

_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class RunFileLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's float syntax (an exponent without a dot is a float)."""


RunFileLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


class RunFileError(ValueError):
    pass


def expanded_size(node: yaml.Node, limit: int = MAX_NODES) -> int:
    """Nodes the document has once every alias is expanded (stops counting past `limit`)."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a node reached again while being counted (a recursive alias) is too big
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        memo[key] = total = min(total, limit + 1)
        return total

    return size(node)


def duplicate_key(node: yaml.Node) -> str | None:
    """'KEY (lines A and B)' for the first mapping key given twice in the document, else None.

    Visits each node once (aliases share nodes), so it is linear in the file, not in its expansion."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            lines: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if k.value in lines:
                        return f"{k.value!r} (lines {lines[k.value]} and {line})"
                    lines[k.value] = line
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def load_run_yaml(data: bytes, source: str):
    """The Python value of a run file's bytes; RunFileError with a message naming `source` otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(f"{source}: not UTF-8 text (invalid byte at offset {e.start}); save the file as UTF-8") from None
    try:
        loader = RunFileLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if expanded_size(node) > MAX_NODES:
                raise RunFileError(
                    f"{source}: the document expands to more than {MAX_NODES:,} YAML nodes through its aliases "
                    "(&anchor / *alias); write the values out"
                )
            twice = duplicate_key(node)
            if twice is not None:
                raise RunFileError(f"{source}: the key {twice} is given twice in one mapping; keep one")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise RunFileError(f"{source}: not valid YAML: {e}") from None
