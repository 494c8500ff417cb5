"""The command line: bad inputs end with a clear message and an exit code, never a traceback, and
read-only commands create nothing."""

import pytest

from flowdpo.cli.main import main


def test_validate_names_the_bad_field(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("apiVersion: flowdpo.dev/v1alpha1\nkind: FlowDPORun\nmetadata: {name: x}\nspec:\n  flow: {maxChunks: 0}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "spec.flow.maxChunks: Input should be greater than or equal to 1" in err and "Traceback" not in err


def test_validate_prints_the_resolved_quickstart(capsys, monkeypatch, tmp_path):
    from flowdpo.spec import quickstart_path

    assert main(["validate", str(quickstart_path())]) == 0
    out = capsys.readouterr().out
    assert "kind: FlowDPORun" in out and "chunkTokens: 64" in out


def test_status_and_report_of_a_missing_folder_create_nothing(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["status", str(missing)]) == 2
    assert main(["report", str(missing)]) == 2
    assert not missing.exists()
    assert "no such run folder" in capsys.readouterr().err


def test_report_of_an_empty_run_says_what_to_do(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no results" in capsys.readouterr().err


def _commands_with_storage_option():
    from flowdpo.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(
        name for name, p in sub.choices.items() if any("--storage" in a.option_strings for a in p._actions)
    )


@pytest.mark.parametrize("value", ["s3://", "azure://bucket/x", "ftp://host/run", "", "   "])
@pytest.mark.parametrize("command", _commands_with_storage_option())
def test_a_bad_storage_option_is_named_by_every_command(command, value, tmp_path, capsys, monkeypatch):
    """`--storage` overrides spec.storage.uri after the run file was validated: it is validated like the field
    (no traceback), before anything is read, written or loaded."""
    from flowdpo.spec import quickstart_path

    monkeypatch.chdir(tmp_path)
    extra = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"] if command == "judge" else []
    assert main([command, str(quickstart_path()), "--storage", value, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_every_command_that_reads_a_run_file_offers_the_storage_option():
    assert {"run", "signal", "compile", "eval", "judge", "worker", "trainer", "prepare"} <= set(
        _commands_with_storage_option()
    )
