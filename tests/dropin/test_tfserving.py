"""`triserve tensorflow_model_server ...`: TF Serving's command line as `triserve serve` options."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve.dropin.tfserving import parse_plan
from triserve.options import FRONTENDS


def only(chosen: dict[str, int]) -> dict[str, int]:
    return {name: chosen.get(name, 0) for name in FRONTENDS}


def test_kserves_runtime_command_line():
    """KServe: tensorflow_model_server --model_name=m --port=9000 --rest_api_port=8080 --model_base_path=DIR
    (its ServingRuntime also passes --rest_api_timeout_in_ms=60000: accepted with a warning)."""
    plan = parse_plan(["--model_name=m", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models"])
    chosen = plan.options()
    assert plan.warnings == []
    runtime = parse_plan(["--model_name=m", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models",
                          "--rest_api_timeout_in_ms=60000"])
    assert runtime.warnings == ["tensorflow_model_server flag --rest_api_timeout_in_ms is not implemented by"
                                " triserve; ignored"]
    assert runtime.options() == chosen
    assert (chosen.tfserving.model_name, chosen.tfserving.base_path) == ("m", Path("/mnt/models"))
    assert dict(chosen.ports) == only({"tfserving_grpc": 9000, "tfserving_rest": 8080})
    assert chosen.host == "0.0.0.0" and not chosen.model_repositories and not chosen.archives.enabled


def test_the_binarys_defaults():
    chosen = parse_plan(["--model_base_path=/models/x"]).options()
    assert chosen.tfserving.model_name == "default"
    assert dict(chosen.ports) == only({"tfserving_grpc": 8500})  # REST off unless --rest_api_port
    assert (chosen.tfserving.fs_poll_seconds, chosen.tfserving.config_poll_seconds) == (1.0, 0.0)


def test_a_models_conf_and_poll_settings():
    chosen = parse_plan(["--model_config_file=/models/models.conf", "--model_config_file_poll_wait_seconds=60",
                         "--file_system_poll_wait_seconds=0", "--rest_api_port=8501"]).options()
    assert chosen.tfserving.config_file == Path("/models/models.conf") and chosen.tfserving.base_path is None
    assert (chosen.tfserving.fs_poll_seconds, chosen.tfserving.config_poll_seconds) == (0.0, 60.0)
    assert chosen.ports["tfserving_rest"] == 8501


def test_not_implemented_flags_warn_once_each_bare_booleans_included():
    plan = parse_plan(["--model_base_path=/m", "--enable_batching", "--batching_parameters_file=b.txt",
                       "--rest_api_timeout_in_ms=5000", "--tensorflow_intra_op_parallelism=2",
                       "--saved_model_tags=serve"])
    assert sorted(plan.warnings) == [f"tensorflow_model_server flag {flag} is not implemented by triserve; ignored"
                                     for flag in ("--batching_parameters_file", "--enable_batching",
                                                  "--rest_api_timeout_in_ms", "--tensorflow_intra_op_parallelism")]


@pytest.mark.parametrize("argv, message", [
    (["--ssl_config_file=ssl.conf"], "--ssl_config_file=ssl.conf is not supported by triserve"),
    (["--saved_model_tags=serve,gpu"], "--saved_model_tags=serve,gpu is not supported by triserve"),
    (["--grpc_socket_path=/tmp/s"], "--grpc_socket_path=/tmp/s is not supported"),
    (["--prefer_tflite_model"], "--prefer_tflite_model is not supported"),
    (["--model_config_file=m.conf"], "cannot both be given"),
])
def test_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_plan(["--model_base_path=/m", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_model_is_required(capsys):
    with pytest.raises(SystemExit):
        parse_plan(["--port=9000"])
    assert "Both server_options.model_base_path and server_options.model_config_file are empty!" in (
        capsys.readouterr().err)


@pytest.mark.slow
def test_kserves_command_line_serves_on_the_ports_it_names(tmp_path):
    """KServe's TF Serving runtime command line, over a SavedModel in DIR/1/."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tests.conftest import free_port
    from tests.dropin.running import start, stop, wait_http
    from tests.savedmodels import adder

    (tmp_path / "m").mkdir()
    adder(tmp_path / "m" / "1", 3.0)
    grpc_port, rest_port = free_port(), free_port()
    log = tmp_path / "server.log"
    process = start("tensorflow_model_server", "--model_name=m", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                    f"--model_base_path={tmp_path / 'm'}", cwd=tmp_path, log=log)
    try:
        status = wait_http(f"http://127.0.0.1:{rest_port}/v1/models/m", log, process).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 2}, {"size": 1}])))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        import tensorflow as tf

        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0], [5.0]]
    finally:
        assert stop(process) == 0, log.read_text()
    assert f"TF Serving gRPC on 0.0.0.0:{grpc_port}, TF Serving REST on 0.0.0.0:{rest_port}; all 1 model ready" in (
        log.read_text())
