"""What every `flowdpo` subcommand shares: reading the run file and naming a run's storage.

Subcommand modules import this module; it imports none of them.
"""

from __future__ import annotations

from pathlib import Path


def storage_arg(value: str) -> str:
    """A run folder or URI: a plain path is a local folder."""
    if not value.strip():
        from flowdpo.spec import SpecError

        raise SpecError("expected a run folder or a storage URI, got an empty argument")
    return value if "://" in value else f"file://{Path(value).resolve()}"


def run_uri(value: str) -> str:
    """`status`/`report` argument: a run file (its spec.storage.uri), a run folder, or a storage URI."""
    if value.endswith((".yaml", ".yml")) and Path(value).is_file():
        return load_run_file(value).storage_uri()
    return storage_arg(value)


def load_run_file(path: str | None):
    from flowdpo.spec import load_document, quickstart_path

    return load_document(path or quickstart_path())


def local_run_dir(doc) -> Path:
    uri = doc.storage_uri()
    return Path(uri[len("file://") :]) if uri.startswith("file://") else Path(".") / f"{doc.name}-local"




def add_storage_option(p) -> None:
    p.add_argument("--storage", help="override spec.storage.uri (a folder or URI)")


def apply_storage_option(doc, value: str | None):
    """Set spec.storage.uri from `--storage` (if given), validated like the run file's own field."""
    if value is None:
        return doc
    from pydantic import ValidationError

    from flowdpo.spec import SpecError

    try:
        doc.spec.storage.uri = storage_arg(value)
    except SpecError as err:
        raise SpecError(f"--storage: {err}") from None
    except ValidationError as err:
        why = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise SpecError(f"--storage {value!r}: {why}") from None
    return doc


def load_with_storage(args):
    """The run file of `args.file` with `--storage` (if given) applied."""
    return apply_storage_option(load_run_file(args.file), getattr(args, "storage", None))
