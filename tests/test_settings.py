"""Every `triserve serve` setting from TRISERVE_* variables and a --config YAML file:
flag > env > file > default, each value checked as its flag checks it; `triserve config show`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triserve import settings
from triserve.cli import _serve_parser, main, parser
from triserve.options import ServerOptions, from_args


def effective(argv: list[str], env: dict[str, str]) -> tuple[ServerOptions, dict[str, str]]:
    """What `triserve serve ARGV` runs with in environment `env`."""
    args = parser().parse_args(["serve", *argv])
    merged, sources = settings.effective(_serve_parser(), args, settings.given(_serve_parser(), argv), env)
    return from_args(merged), sources


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "triserve.yaml"
    path.write_text("http-port: 9100\ngrpc_port: 9101\nmetrics-port: 9102\nmodel-repository: [/r1, /r2]\n"
                    "strict-readiness: false\nmodels: [a.mar]\n")
    return path


def test_flag_beats_env_beats_file_beats_default(config):
    chosen, sources = effective(["--config", str(config), "--http-port", "9000"],
                                {"TRISERVE_HTTP_PORT": "9200", "TRISERVE_GRPC_PORT": "9201"})
    assert (chosen.ports["http"], chosen.ports["grpc"], chosen.ports["metrics"]) == (9000, 9201, 9102)
    assert chosen.ports["tfserving_rest"] == 8501  # nobody set it
    assert chosen.model_repositories == (Path("/r1"), Path("/r2")) and not chosen.kserve.strict_readiness
    assert chosen.archives.models == ("a.mar",)
    assert (sources["http_port"], sources["grpc_port"], sources["metrics_port"], sources["tfserving_rest_port"]) == (
        "flag", "env TRISERVE_GRPC_PORT", f"file {config}", "default")


def test_the_config_file_from_the_environment_and_lists_and_booleans_from_variables(config):
    chosen, _ = effective([], {"TRISERVE_CONFIG": str(config), "TRISERVE_MODEL_REPOSITORY": "/e1, /e2",
                               "TRISERVE_EXIT_ON_ERROR": "true", "TRISERVE_ENABLE_MODEL_API": "1",
                               "triserve_log_level": "warning"})
    assert chosen.model_repositories == (Path("/e1"), Path("/e2"))  # the variable beats the file
    assert chosen.exit_on_error and chosen.torchserve.enable_model_api and chosen.log_level == "warning"
    assert chosen.ports["http"] == 9100


def test_no_environment_and_no_file_is_the_plain_command_line():
    chosen, sources = effective(["--http-port", "9000"], {})
    assert chosen == from_args(parser().parse_args(["serve", "--http-port", "9000"]))
    assert set(sources.values()) == {"flag", "default"}


@pytest.mark.parametrize("env, message", [
    ({"TRISERVE_HTTP_PORT": "eighty"}, "http-port (flag --http-port, env TRISERVE_HTTP_PORT): "),
    ({"TRISERVE_HTTP_MAX_CONNECTIONS": "0"}, "expected a positive integer, got '0'"),
    ({"TRISERVE_MODEL_CONTROL_MODE": "sometimes"}, "expected one of none, poll, explicit, got 'sometimes'"),
    ({"TRISERVE_STRICT_READINESS": "maybe"}, "strict-readiness (flag --strict-readiness"),
])
def test_a_bad_value_is_refused_as_its_flag_would_refuse_it(env, message):
    with pytest.raises(settings.SettingsError) as e:
        effective([], env)
    assert message in str(e.value)


def test_an_unknown_key_or_a_missing_file_in_the_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("http-port: 9000\nhttp-prot: 9001\n")
    with pytest.raises(settings.SettingsError) as e:
        effective(["--config", str(bad)], {})
    assert f"http-prot: not a serve setting (in {bad})" in str(e.value)
    with pytest.raises(settings.SettingsError) as e:
        effective(["--config", str(tmp_path / "none.yaml")], {})
    assert "cannot read --config" in str(e.value) and "none.yaml" in str(e.value)
    for text, message in (("a: [\n", "is not valid YAML (line 2, column 1)"),
                          ("- http-port\n", "must be a mapping of setting: value"),
                          ("http-port: eighty\n", "http-port (flag --http-port, env TRISERVE_HTTP_PORT): expected"
                                                   " an integer, got 'eighty'")):
        bad.write_text(text)
        with pytest.raises(settings.SettingsError) as e:
            effective(["--config", str(bad)], {})
        assert message in str(e.value)


def test_serve_stops_at_a_bad_setting_before_starting_anything(monkeypatch, capsys):
    monkeypatch.setenv("TRISERVE_HTTP_PORT", "eighty")
    with pytest.raises(SystemExit) as e:
        main(["serve"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("triserve serve: http-port (flag --http-port, env TRISERVE_HTTP_PORT)")


def test_config_show_prints_yaml_that_config_reads_back(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRISERVE_GRPC_PORT", "9201")
    with pytest.raises(SystemExit) as e:
        main(["config", "show", "--config", str(config), "--http-port", "9000"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "http-port: 9000  # flag\n" in out and "grpc-port: 9201  # env TRISERVE_GRPC_PORT\n" in out
    assert f"metrics-port: 9102  # file {config}\n" in out and 'host: "127.0.0.1"  # default\n' in out
    shown = yaml.safe_load(out)
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(shown))
    monkeypatch.delenv("TRISERVE_GRPC_PORT")
    assert effective(["--config", str(again)], {})[0] == effective(
        ["--config", str(config), "--http-port", "9000"], {"TRISERVE_GRPC_PORT": "9201"})[0]
