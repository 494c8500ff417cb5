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


def _numeric_options():
    """(parser name, subcommand, option, type) of every numeric option of flowdpo and flowdpo-operator."""
    from flowdpo.cli import arguments
    from flowdpo.cli.main import build_parser
    from flowdpo_operator.__main__ import build_parser as operator_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parsers = [("flowdpo", name, p) for name, p in sub.choices.items()] + [("operator", None, operator_parser())]
    out = []
    for prog, name, p in parsers:
        for a in p._actions:
            if a.type in (int, float):
                raise AssertionError(f"{prog} {name} {a.option_strings}: a bare {a.type.__name__} type")
            if a.option_strings and getattr(a.type, "__module__", None) == arguments.__name__:
                out.append((prog, name, a.option_strings[-1], a.type.__name__))
    return out


NUMERIC_OPTIONS = _numeric_options()


def test_every_numeric_option_has_a_checked_type():
    assert {o[2] for o in NUMERIC_OPTIONS} >= {"--metrics-port", "--poll-seconds", "--lease-seconds", "--priority"}


@pytest.mark.parametrize(("prog", "command", "option", "kind"), NUMERIC_OPTIONS)
def test_a_bad_number_is_a_usage_error_naming_the_option(prog, command, option, kind, capsys):
    """Not a traceback at the first bind() or sleep(): argparse's usage error (exit 2), before anything runs."""
    from flowdpo.cli.main import build_parser
    from flowdpo_operator.__main__ import build_parser as operator_parser

    bad = {"port": ["abc", "0", "-5", "70000", "1.5"], "port_or_off": ["abc", "-5", "70000"],
           "positive_seconds": ["abc", "-1", "0", "nan", "inf", "1e999"], "positive_int": ["abc", "0", "-3", "2.5"],
           "any_int": ["abc", "2.5"], "number": ["abc", "nan", "-inf"]}[kind]  # fmt: skip
    for value in bad:
        if prog == "operator":
            argv = []
        elif command == "metrics-proxy":
            argv = [command, "--upstream", "http://127.0.0.1:1/metrics", "--metrics-port", "9400"]
        else:
            argv = [command, "run.yaml"]
        argv.append(f"{option}={value}")
        parser = operator_parser() if prog == "operator" else build_parser()
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"argument {option}" in err and "Traceback" not in err, (argv, err)


def test_a_bad_environment_default_is_named_and_other_commands_still_work(monkeypatch, capsys):
    from flowdpo.spec import quickstart_path
    from flowdpo_operator.__main__ import build_parser as operator_parser

    monkeypatch.setenv("FLOWDPO_LEASE_SECONDS", "abc")
    monkeypatch.setenv("FLOWDPO_OPERATOR_RESYNC_SECONDS", "-1")
    with pytest.raises(SystemExit) as exit_:
        main(["worker", str(quickstart_path())])
    assert exit_.value.code == 2 and "argument --lease-seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        operator_parser().parse_args([])
    assert exit_.value.code == 2 and "argument --resync-seconds" in capsys.readouterr().err
    assert main(["validate", str(quickstart_path())]) == 0  # only the commands that use the variable refuse it
    assert operator_parser().parse_args(["--resync-seconds", "5"]).resync_seconds == 5


def _writer_lease(tmp_path):
    from flowdpo.run.writer import WriterLease
    from flowdpo.storage import open_store

    return WriterLease(open_store(f"file://{tmp_path}/run"), "trainer")


def _store(tmp_path):
    from flowdpo.storage import open_store

    return open_store(f"file://{tmp_path}/run")


def _sft_checkpoints(tmp_path):
    from flowdpo.compile.sft import SFTCheckpoints

    return SFTCheckpoints(_store(tmp_path), "flow-generated", "fp")


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
@pytest.mark.parametrize(
    ("variable", "read"),
    [
        ("FLOWDPO_WRITER_LEASE_SECONDS", _writer_lease),
        ("FLOWDPO_STORE_RETRY_SECONDS", _store),
        ("FLOWDPO_SFT_CHECKPOINT_SECONDS", _sft_checkpoints),
    ],
)
def test_a_bad_number_in_an_environment_variable_is_named(variable, read, value, tmp_path, monkeypatch):
    """Numbers from the environment are read where they are used (flowdpo/envvars.py), not at import, and a bad
    one names the variable; EnvError is a user error (exit code 2, no traceback)."""
    from flowdpo.cli.main import error_exit_codes
    from flowdpo.envvars import EnvError

    monkeypatch.setenv(variable, value)
    if variable == "FLOWDPO_STORE_RETRY_SECONDS" and value == "0":
        read(tmp_path)  # no retries is a valid choice
        return
    with pytest.raises(EnvError, match=f"^{variable}='{value}': expected a number"):
        read(tmp_path)
    assert error_exit_codes()[EnvError] == 2
