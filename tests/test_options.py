"""`triserve serve`'s command line, and TorchServe's config.properties under it, as typed options."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve.cli import parser
from triserve.errors import ServerError
from triserve.options import DEFAULT_PORTS, ServerOptions, from_args


def options(*args: str) -> ServerOptions:
    return from_args(parser().parse_args(["serve", *args]))


def test_the_command_line_defaults_are_the_options_defaults():
    assert options() == ServerOptions()
    defaults = options()
    assert dict(defaults.ports) == dict(DEFAULT_PORTS)
    assert defaults.ports["http"] == 8000 and defaults.ports["torchserve_management"] == 8081
    assert (defaults.model_control_mode, defaults.kserve.strict_readiness, defaults.exit_on_error) == ("none", True, False)
    assert not defaults.tfserving.enabled and not defaults.archives.enabled


def test_ports_and_hosts():
    chosen = options("--http-port", "9000", "--grpc-port", "0", "--host", "0.0.0.0")
    assert chosen.ports["http"] == 9000 and chosen.ports["grpc"] == 0
    assert chosen.ports["metrics"] == DEFAULT_PORTS["metrics"]
    assert chosen.host_of("torchserve_inference") == "0.0.0.0"


def test_repeated_and_comma_separated_values():
    chosen = options(
        "--model-repository", "a", "--model-repository", "b", "--model-control-mode", "explicit",
        "--load-model", "x", "--load-model", "y", "--models", "one.mar,two.mar", "three.mar",
        "--allowed-url-hosts", "example.com, mirror:8080", "--allowed-url-hosts", "other",
    )
    assert chosen.model_repositories == (Path("a"), Path("b"))
    assert (chosen.model_control_mode, chosen.load_models) == ("explicit", ("x", "y"))
    assert chosen.archives.models == ("one.mar", "two.mar", "three.mar") and chosen.archives.enabled
    assert chosen.archives.allowed_url_hosts == ("example.com", "mirror:8080", "other")


def test_http_limits_and_logging():
    defaults = options().http
    assert (defaults.max_input_size, defaults.max_headers, defaults.max_header_size) == (64 * 1024 * 1024, 100, 65536)
    assert (defaults.header_timeout, defaults.max_connections, defaults.access_log) == (30.0, 1000, True)
    assert defaults.body_timeout == 30.0
    assert options("--http-body-timeout", "4.5").http.body_timeout == 4.5
    assert options().log_format == "text"
    chosen = options("--http-max-input-size", "1024", "--http-max-headers", "20", "--http-max-header-size", "8192",
                     "--http-header-timeout", "2.5", "--http-max-connections", "50", "--no-access-log",
                     "--log-format", "json")
    assert (chosen.http.max_input_size, chosen.http.max_headers, chosen.http.max_header_size) == (1024, 20, 8192)
    assert (chosen.http.header_timeout, chosen.http.max_connections, chosen.http.access_log) == (2.5, 50, False)
    assert chosen.log_format == "json"
    for flag in ("--http-max-input-size", "--http-header-timeout", "--http-body-timeout", "--http-max-connections"):
        with pytest.raises(SystemExit):
            options(flag, "0")


def test_tf_serving_options():
    chosen = options("--model-base-path", "/models/m", "--model-name", "m", "--file-system-poll-wait-seconds", "0.5")
    assert chosen.tfserving.enabled
    assert (chosen.tfserving.base_path, chosen.tfserving.model_name) == (Path("/models/m"), "m")
    assert chosen.tfserving.fs_poll_seconds == 0.5 and chosen.tfserving.config_file is None


PROPERTIES = """
# TorchServe's config.properties
inference_address=http://0.0.0.0:7070
management_address=http://0.0.0.0:7071
model_store=/srv/store
load_models=first.mar,second.mar
default_workers_per_model=2
job_queue_size=5
max_request_size=1000
enable_model_api=true
models={"first": {"1.0": {"batchSize": 4}}}
"""


@pytest.fixture
def ts_config(tmp_path) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(PROPERTIES)
    return path


def test_ts_config_fills_what_the_command_line_left_at_defaults(ts_config):
    chosen = options("--ts-config", str(ts_config))
    assert chosen.ports["torchserve_inference"] == 7070 and chosen.ports["torchserve_management"] == 7071
    assert chosen.ports["torchserve_metrics"] == DEFAULT_PORTS["torchserve_metrics"]
    assert chosen.host_of("torchserve_inference") == "0.0.0.0"
    assert chosen.host_of("http") == "127.0.0.1"  # the file's addresses are TorchServe's front ends only
    assert chosen.archives.model_store == Path("/srv/store")
    assert chosen.archives.models == ("first.mar", "second.mar")
    assert (chosen.archives.default_workers, chosen.archives.job_queue_size) == (2, 5)
    assert chosen.torchserve.max_request_size == 1000 and chosen.torchserve.enable_model_api
    assert dict(chosen.archives.models_config) == {"first": {"1.0": {"batchSize": 4}}}


def test_the_command_line_wins_over_ts_config(ts_config):
    chosen = options(
        "--ts-config", str(ts_config), "--torchserve-inference-port", "6000", "--host", "10.0.0.1",
        "--model-store", "/cli/store", "--models", "third.mar", "--default-workers-per-model", "3",
        "--job-queue-size", "7",
    )
    assert chosen.ports["torchserve_inference"] == 6000
    assert chosen.ports["torchserve_management"] == 7071  # left at its default: the file's
    assert chosen.host_of("torchserve_inference") == "10.0.0.1"
    assert chosen.archives.model_store == Path("/cli/store")
    assert chosen.archives.models == ("third.mar",)
    assert (chosen.archives.default_workers, chosen.archives.job_queue_size) == (3, 7)


def test_a_ts_config_that_cannot_be_read_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError) as e:
        options("--ts-config", str(tmp_path / "missing.properties"))
    assert "cannot read --ts-config" in e.value.message and "missing.properties" in e.value.message


def test_a_bad_address_in_ts_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("inference_address=https://0.0.0.0:8443\n")
    with pytest.raises(ServerError) as e:
        options("--ts-config", str(path))
    assert "HTTPS listeners are not supported" in e.value.message


def test_a_model_snapshot_loads_its_models_with_their_settings(tmp_path):
    """KServe's config.properties names its models in `model_snapshot` (TorchServe restores it at start)."""
    path = tmp_path / "config.properties"
    path.write_text('model_store=/srv/store\nmodel_snapshot={"name":"startup.cfg","modelCount":2,"models":{'
                    '"mnist":{"1.0":{"defaultVersion":true,"marName":"mnist.mar","minWorkers":3,"batchSize":2}},'
                    '"bert":{"2.0":{"marName":"bert_v2.mar","minWorkers":1}}}}\n'
                    'models={"bert":{"2.0":{"minWorkers":4}}}\n')
    chosen = options("--ts-config", str(path))
    assert chosen.archives.models == ("mnist=mnist.mar", "bert=bert_v2.mar")
    assert chosen.archives.models_config["mnist"]["1.0"]["minWorkers"] == 3
    assert chosen.archives.models_config["bert"]["2.0"] == {"minWorkers": 4}  # `models` wins over the snapshot
    assert options("--ts-config", str(path), "--models", "other.mar").archives.models == ("other.mar",)
    path.write_text("model_snapshot={not json\n")
    with pytest.raises(ServerError) as e:
        options("--ts-config", str(path))
    assert "'model_snapshot' is not valid JSON" in e.value.message


def test_allow_model_code_and_its_torchserve_alias_set_the_same_option():
    assert not options().archives.allow_custom_handlers
    assert options("--allow-model-code").archives.allow_custom_handlers
    assert options("--allow-custom-handlers").archives.allow_custom_handlers


def test_batch_calibration():
    assert options().batch_calibration == "on"
    assert options("--batch-calibration", "off").batch_calibration == "off"
    assert options("--batch-calibration", "remeasure").batch_calibration == "remeasure"
    with pytest.raises(SystemExit):
        options("--batch-calibration", "sometimes")
