"""The `triserve` command line: every option documented, --version, the top-level help."""

from __future__ import annotations

import argparse

import pytest

from triserve import __version__
from triserve.cli import main, parser


def subcommands(p: argparse.ArgumentParser, path: str = "triserve"):
    """(command path, parser) of the whole argparse tree, `p` first."""
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, f"{path} {name}")


def options(p: argparse.ArgumentParser):
    return [a for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_the_tree_has_every_command():
    names = {path for path, _ in subcommands(parser())}
    assert {"triserve serve", "triserve classify", "triserve archive", "triserve export-examples",
            "triserve bench"} <= names


def test_every_option_of_every_subcommand_has_help_and_states_its_default():
    missing, no_default = [], []
    for path, p in subcommands(parser()):
        for action in options(p):
            what = f"{path} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                missing.append(what)
                continue
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                       argparse._VersionAction))
            has_default = action.default not in (None, [], argparse.SUPPRESS) and not flag and not action.required
            if action.option_strings and has_default and "default" not in action.help.lower():
                no_default.append(f"{what} (default {action.default!r})")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not state the default: {no_default}"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"triserve {__version__}"


def test_top_level_help_lists_every_command_and_serve_names_what_it_serves():
    text = parser().format_help()
    for command in ("serve", "classify", "archive", "export-examples", "bench"):
        assert f"    {command} " in text or f"    {command}\n" in text, command
    serve = dict(subcommands(parser()))["triserve serve"].format_help()
    for source in ("Triton model repositories", "TorchServe model archives", "TF Serving models"):
        assert source in serve


def test_a_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_the_drop_in_commands_take_their_servers_command_lines(capsys):
    names = {path for path, _ in subcommands(parser())}
    assert {"triserve tritonserver", "triserve torchserve", "triserve tensorflow_model_server"} <= names
    with pytest.raises(SystemExit) as e:
        main(["tritonserver", "--model-store=/m", "--grpc-use-ssl=true"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: triserve tritonserver [options]")
    assert "triserve tritonserver: error: --grpc-use-ssl=true is not supported by triserve" in err


def test_triserve_torchserve_stop_without_a_server(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(SystemExit) as e:
        main(["torchserve", "--stop"])
    assert e.value.code == 0 and capsys.readouterr().out == "TorchServe is not currently running.\n"


@pytest.mark.parametrize("server, flag", [("tritonserver", "--model-repository"), ("torchserve", "--ts-config"),
                                          ("tensorflow_model_server", "--rest_api_port")])
def test_each_drop_in_command_has_its_servers_help(server, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main([server, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: triserve {server} [options]") and flag in out
