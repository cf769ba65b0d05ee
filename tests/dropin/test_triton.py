"""`triserve tritonserver ...`: Triton's command line as `triserve serve` options."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve.dropin.triton import parse_plan
from triserve.options import FRONTENDS


def options(*argv: str):
    return parse_plan(list(argv)).options()


def only(chosen: dict[str, int]) -> dict[str, int]:
    return {name: chosen.get(name, 0) for name in FRONTENDS}


def test_kserves_runtime_command_line():
    """KServe's Triton ServingRuntime: tritonserver --model-store=/mnt/models --grpc-port=9000
    --http-port=8080 --allow-grpc=true --allow-http=true."""
    plan = parse_plan(["--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080", "--allow-grpc=true",
                       "--allow-http=true"])
    chosen = plan.options()
    assert plan.warnings == []
    assert chosen.model_repositories == (Path("/mnt/models"),)
    assert dict(chosen.ports) == only({"http": 8080, "grpc": 9000, "metrics": 8002})
    assert chosen.host == "0.0.0.0"
    assert (chosen.model_control_mode, chosen.exit_on_error, chosen.kserve.strict_readiness) == ("none", True, True)


def test_tritons_defaults_and_spellings():
    chosen = options("--model-repository", "/models", "--model-repository=/more")
    assert chosen.model_repositories == (Path("/models"), Path("/more"))
    assert dict(chosen.ports) == only({"http": 8000, "grpc": 8001, "metrics": 8002})
    chosen = options("--model-store=/m", "--model-control-mode=explicit", "--load-model=a", "--load-model", "b",
                     "--strict-readiness=false", "--exit-on-error=0", "--allow-metrics=off", "--allow-grpc", "FALSE",
                     "--repository-poll-secs=3", "--http-max-input-size=1024", "--log-verbose=1",
                     "--strict-model-config=false", "--http-address=127.0.0.1")
    assert (chosen.model_control_mode, chosen.load_models) == ("explicit", ("a", "b"))
    assert (chosen.kserve.strict_readiness, chosen.exit_on_error) == (False, False)
    assert dict(chosen.ports) == only({"http": 8000})
    assert (chosen.repository_poll_secs, chosen.http.max_input_size, chosen.log_level) == (3, 1024, "debug")
    assert chosen.host == "127.0.0.1"
    assert options("--model-store=/m", "--log-info=false").log_level == "warning"


def test_a_flag_triserve_does_not_implement_is_accepted_with_one_warning_naming_it():
    plan = parse_plan(["--model-store=/m", "--rate-limit=execution_count", "--backend-config=onnxruntime,a=1",
                       "--backend-config", "tensorflow,version=2", "--pinned-memory-pool-byte-size=0",
                       "--allow-gpu-metrics=false"])
    assert sorted(plan.warnings) == [
        f"tritonserver flag {flag} is not implemented by triserve; ignored"
        for flag in ("--allow-gpu-metrics", "--backend-config", "--pinned-memory-pool-byte-size", "--rate-limit")
    ]  # --backend-config twice, one warning
    assert plan.options().model_repositories == (Path("/m"),)  # otherwise as without them


@pytest.mark.parametrize("argv, message", [
    (["--grpc-use-ssl=true"], "--grpc-use-ssl=true is not supported by triserve"),
    (["--strict-model-config=true"], "--strict-model-config=true is not supported by triserve"),
    (["--disable-auto-complete-config"], "--disable-auto-complete-config is not supported by triserve"),
    (["--http-restricted-api=model-repository:admin-key=secret"], "--http-restricted-api=model-repository"),
    (["--model-namespacing=true"], "--model-namespacing=true is not supported"),
    (["--allow-sagemaker=true"], "--allow-sagemaker=true is not supported"),
    (["--grpc-address=127.0.0.1"], "different addresses per front end (0.0.0.0, 127.0.0.1) are not supported"),
    (["--load-model=*", "--load-model=a"], "--load-model=* cannot be combined"),
])
def test_a_flag_that_would_change_the_answers_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_plan(["--model-store=/m", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_refused_when_false_is_accepted_quietly():
    assert parse_plan(["--model-store=/m", "--grpc-use-ssl=false", "--allow-sagemaker=0"]).warnings == []


def test_a_model_repository_is_required(capsys):
    with pytest.raises(SystemExit):
        parse_plan(["--http-port=9000"])
    assert "--model-repository must be specified" in capsys.readouterr().err


def test_an_unknown_flag_is_an_error_as_in_triton(capsys):
    with pytest.raises(SystemExit) as e:
        parse_plan(["--model-store=/m", "--no-such-flag=1"])
    assert e.value.code == 2 and "--no-such-flag" in capsys.readouterr().err


@pytest.mark.slow
def test_kserves_command_line_serves_on_the_ports_it_names(tmp_path):
    """KServe's Triton runtime command line (plus a free metrics port: 8002 may be taken here)."""
    import tritonclient.grpc as grpcclient

    from tests.conftest import free_port
    from tests.dropin.running import start, stop, wait_http
    from tests.inprocess import tiny_repository

    repo = tiny_repository(tmp_path / "models")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    process = start("tritonserver", f"--model-store={repo}", f"--grpc-port={grpc_port}", f"--http-port={http_port}",
                    "--allow-grpc=true", "--allow-http=true", f"--metrics-port={metrics_port}", cwd=tmp_path, log=log)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready", log, process)
        assert grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_model_ready("simple")
        assert "nv_inference_request_success" in wait_http(f"http://127.0.0.1:{metrics_port}/metrics", log).text
    finally:
        assert stop(process) == 0, log.read_text()
    text = log.read_text()
    assert f"KServe v2 HTTP on 0.0.0.0:{http_port}, KServe v2 gRPC on 0.0.0.0:{grpc_port}, Triton metrics on" \
           f" 0.0.0.0:{metrics_port}; all 3 models ready" in text
    assert "warning" not in text.lower()


def test_log_file_and_trace_flags_old_and_new(tmp_path):
    chosen = options("--model-store=/m", f"--log-file={tmp_path / 'triton.log'}", "--trace-config=rate=10",
                     "--trace-config", "triton,file=/tmp/t.json", "--trace-level=TIMESTAMPS", "--trace-count=5")
    assert chosen.log_file == str(tmp_path / "triton.log")
    assert sorted(chosen.kserve.trace_config) == sorted(
        ["level=TIMESTAMPS", "count=5", "rate=10", "triton,file=/tmp/t.json"])
