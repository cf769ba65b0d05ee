"""`triserve torchserve ...`: TorchServe's command line as `triserve serve` options, and its
--start / --stop / --foreground as TorchServe has them (the pid file in $TMPDIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from triserve.dropin import torchserve
from triserve.dropin.torchserve import parse_plan
from triserve.options import DEFAULT_PORTS, FRONTENDS


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Each test in its own folder and TMPDIR: no ./config.properties, its own pid file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("TS_CONFIG_FILE", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    (tmp_path / "model-store").mkdir()


def torchserve_ports(**moved: int) -> dict[str, int]:
    chosen = {name: DEFAULT_PORTS[name] for name in FRONTENDS if name.startswith("torchserve_")}
    return {name: moved.get(name, chosen.get(name, 0)) for name in FRONTENDS}


def test_the_blogs_command_line():
    """torchserve --start --model-store model-store/ --models mobilenet=model-store/mobilenet.mar"""
    plan = parse_plan(["--start", "--model-store", "model-store/", "--models", "mobilenet=model-store/mobilenet.mar"])
    chosen = plan.options()
    assert plan.warnings == []
    assert chosen.archives.model_store == Path("model-store/")
    assert chosen.archives.models == ("mobilenet=model-store/mobilenet.mar",)
    assert dict(chosen.ports) == torchserve_ports()
    assert dict(chosen.ports)["torchserve_inference"] == 8080 and dict(chosen.ports)["torchserve_management"] == 8081
    assert chosen.host_of("torchserve_inference") == "127.0.0.1"
    assert chosen.torchserve.enable_token_auth and not chosen.torchserve.enable_model_api  # TorchServe 0.12's defaults


# KServe's TorchServe sample config.properties (its docs and pytorch/serve's kubernetes/kserve), ports
# apart: the inference port 8085, KServe's proxy being on 8080.
KSERVE_PROPERTIES = """\
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,\
"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":4,"maxBatchDelay":10,"responseTimeout":120}}}}
"""


def test_kserves_runtime_command_line_reads_its_config_properties(tmp_path):
    """KServe: torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties"""
    config = tmp_path / "config.properties"
    config.write_text(KSERVE_PROPERTIES)
    plan = parse_plan(["--start", f"--model-store={tmp_path / 'model-store'}", f"--ts-config={config}"])
    chosen = plan.options()
    assert plan.warnings == []
    assert dict(chosen.ports) == torchserve_ports(torchserve_inference=8085)
    assert chosen.host_of("torchserve_inference") == chosen.host_of("torchserve_management") == "0.0.0.0"
    assert chosen.archives.model_store == tmp_path / "model-store"  # the command line wins over model_store
    # the snapshot's models load at start, with its settings
    assert chosen.archives.models == ("mnist=mnist.mar",)
    assert chosen.archives.models_config["mnist"]["1.0"]["minWorkers"] == 1
    assert chosen.archives.job_queue_size == 10
    assert chosen.torchserve.enable_token_auth  # no disable_token_authorization: on, as TorchServe 0.12


def test_one_address_for_two_apis_is_kept_as_torchserve_keeps_it(tmp_path):
    """KServe's docs give inference and management one address: both APIs on that one port."""
    config = tmp_path / "config.properties"
    config.write_text(KSERVE_PROPERTIES.replace("management_address=http://0.0.0.0:8081",
                                                "management_address=http://0.0.0.0:8085"))
    chosen = parse_plan(["--model-store=model-store", f"--ts-config={config}"]).options()
    assert chosen.ports["torchserve_inference"] == chosen.ports["torchserve_management"] == 8085


def test_config_properties_is_found_as_torchserve_finds_it(tmp_path, monkeypatch):
    Path("config.properties").write_text("inference_address=http://127.0.0.1:9080\n")
    assert parse_plan(["--model-store=model-store"]).options().ports["torchserve_inference"] == 9080
    other = tmp_path / "other.properties"
    other.write_text("inference_address=http://127.0.0.1:9090\nmodel_store=model-store\n")
    monkeypatch.setenv("TS_CONFIG_FILE", str(other))
    assert parse_plan([]).options().ports["torchserve_inference"] == 9090


def test_flags():
    chosen = parse_plan(["--model-store=model-store", "--models", "a.mar", "b=b.mar", "--ncs", "--disable-token-auth",
                         "--enable-model-api", "--allow-custom-handlers", "--foreground"]).options()
    assert chosen.archives.models == ("a.mar", "b=b.mar")
    assert not chosen.torchserve.enable_token_auth and chosen.torchserve.enable_model_api
    assert chosen.archives.allow_custom_handlers


def test_not_implemented_flags_warn_and_plugins_are_refused(capsys):
    plan = parse_plan(["--model-store=model-store", "--log-config=log4j2.xml", "--workflow-store=wf"])
    assert plan.warnings == ["torchserve flag --log-config is not implemented by triserve; ignored",
                             "torchserve flag --workflow-store is not implemented by triserve; ignored"]
    with pytest.raises(SystemExit) as e:
        parse_plan(["--model-store=model-store", "--plugins-path=plugins"])
    assert e.value.code == 2 and "--plugins-path=plugins is not supported by triserve" in capsys.readouterr().err


def test_a_model_store_is_required(capsys):
    with pytest.raises(SystemExit):
        parse_plan(["--models", "a.mar"])
    assert "--model-store is required" in capsys.readouterr().err


def test_a_broken_config_fails_before_anything_starts(tmp_path, capsys):
    Path("bad.properties").write_text("inference_address=https://0.0.0.0:8443\n")
    with pytest.raises(SystemExit) as e:
        torchserve.main(["--start", "--model-store=model-store", "--ts-config=bad.properties"])
    assert e.value.code == 2
    assert "HTTPS listeners are not supported" in capsys.readouterr().err
    assert not torchserve.pid_file().exists()


def test_stop_without_a_running_server(capsys):
    assert torchserve.main(["--stop"]) == 0
    assert capsys.readouterr().out == "TorchServe is not currently running.\n"


def test_start_refuses_while_one_runs_and_stop_leaves_other_processes_alone(capsys):
    import subprocess

    other = subprocess.Popen(["sleep", "120"])  # a live process that is not a triserve server
    try:
        torchserve.pid_file().write_text(str(other.pid))
        assert torchserve.pid_file() == Path(os.environ["TMPDIR"]) / ".model_server.pid"
        assert torchserve.main(["--start", "--model-store=model-store"]) == 1
        assert "TorchServe is already running, please use torchserve --stop" in capsys.readouterr().err
        assert torchserve.main(["--stop"]) == 1
        assert f"the process {other.pid} recorded in" in capsys.readouterr().err
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def archive(store: Path, name: str) -> None:
    """A real archive of a tiny ONNX model (base_handler), as NAME.mar in `store`."""
    from tests.inprocess import doubler_onnx
    from triserve.archiver import write_archive

    doubler_onnx(store.parent / f"{name}.onnx")
    write_archive(name, "1.0", "base_handler", store, serialized_file=str(store.parent / f"{name}.onnx"))


def free_ports(config: Path, extra: str = "") -> dict[str, int]:
    """config.properties with every TorchServe port free (and `extra` lines); returns the ports."""
    from tests.conftest import free_port

    chosen = {key: free_port() for key in ("inference_address", "management_address", "metrics_address")}
    lines = [f"{key}=http://127.0.0.1:{port}" for key, port in chosen.items()]
    if "torchserve_grpc_inference" in FRONTENDS:
        lines += [f"grpc_inference_port={free_port()}", f"grpc_management_port={free_port()}"]
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("\n".join(lines) + "\n" + extra)
    return chosen


def start_and_stop(tmp_path: Path, start_args: list[str], ports: dict[str, int], model: str, workers: int) -> None:
    """`torchserve START_ARGS` returns at once with the server in the background; its APIs answer
    with the tokens of ./key_file.json; a second start is refused; `--stop` stops it."""
    import json
    import subprocess
    import sys

    import httpx
    import psutil

    from tests.dropin.running import wait_http

    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("TS_CONFIG_FILE", None)
    log = tmp_path / "server.log"

    def torchserve_command(*args: str) -> subprocess.CompletedProcess:
        with open(log, "a") as out:  # the background server writes here too, as it inherits it
            return subprocess.run([sys.executable, "-m", "triserve", "torchserve", *args], cwd=tmp_path, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=120)

    started = torchserve_command(*start_args)
    assert started.returncode == 0, log.read_text()
    pid = int((tmp_path / ".model_server.pid").read_text())
    inference, management, metrics = (f"http://127.0.0.1:{ports[k]}" for k in
                                      ("inference_address", "management_address", "metrics_address"))
    try:
        assert "started in the background" in log.read_text()
        wait_http(f"{metrics}/metrics", log)  # the metrics port needs no token
        keys = json.loads((tmp_path / "key_file.json").read_text())
        bearer = {"Authorization": f"Bearer {keys['management']['key']}"}
        described = wait_http(f"{management}/models/{model}", log, headers=bearer).json()
        assert described[0]["modelName"] == model and len(described[0]["workers"]) == workers
        assert httpx.get(f"{management}/models").status_code in (400, 401)  # no token
        inference_bearer = {"Authorization": f"Bearer {keys['inference']['key']}"}
        assert wait_http(f"{inference}/ping", log, headers=inference_bearer).json() == {"status": "Healthy"}
        again = torchserve_command(*start_args)
        assert again.returncode == 1 and "TorchServe is already running" in log.read_text()
    finally:
        stopped = torchserve_command("--stop")
    assert stopped.returncode == 0 and "TorchServe has stopped." in log.read_text()
    assert not psutil.pid_exists(pid) and not (tmp_path / ".model_server.pid").exists()


@pytest.mark.slow
def test_the_blogs_start_and_stop_in_the_background(tmp_path):
    """`torchserve --start --model-store model-store/ --models mobilenet=model-store/mobilenet.mar`,
    in a folder whose config.properties (read as TorchServe reads it) moves the ports to free ones;
    token authorization on, as in TorchServe 0.12."""
    archive(tmp_path / "model-store", "mobilenet")
    ports = free_ports(tmp_path / "config.properties")
    start_and_stop(tmp_path, ["--start", "--model-store", "model-store/", "--models",
                              "mobilenet=model-store/mobilenet.mar"], ports, "mobilenet", workers=2)


@pytest.mark.slow
def test_kserves_command_line_with_its_model_snapshot(tmp_path):
    """KServe's runtime: --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties,
    the models named by its model_snapshot (minWorkers 1), inference and management on one address
    as KServe's docs give them."""
    models = tmp_path / "mnt" / "models"
    archive(models / "model-store", "mnist")
    snapshot = KSERVE_PROPERTIES[KSERVE_PROPERTIES.index("model_snapshot="):]
    config = models / "config" / "config.properties"
    ports = free_ports(config, "job_queue_size=10\n" + snapshot)
    config.write_text(config.read_text().replace(f"management_address=http://127.0.0.1:{ports['management_address']}",
                                                 f"management_address=http://127.0.0.1:{ports['inference_address']}"))
    ports["management_address"] = ports["inference_address"]
    start_and_stop(tmp_path, ["--start", f"--model-store={models / 'model-store'}",
                              f"--ts-config={models / 'config' / 'config.properties'}"], ports, "mnist", workers=1)
