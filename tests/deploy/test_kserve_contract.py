"""KServe's runtime contract, run from the runtime manifests themselves (no cluster): their
command and args start `triserve` on a read-only copy of a model repository standing in for
/mnt/models, and what the manifest declares is probed: the startup, readiness (503 while a model
loads, 200 after) and liveness probes, the metrics annotation's path, inference on the declared
port, and SIGTERM draining with 0 failures. Changed for the test only: /mnt/models and /tmp to
test folders, the bind address to 127.0.0.1, and each declared port to a free one (the same
mapping everywhere the manifest names it)."""

from __future__ import annotations

import signal
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tests.deploy.schemas import DEPLOY, documents
from tests.inprocess import tiny_repository
from tests.test_layout import read_only, unchanged, writable
from tests.test_single_port_drain import CLIENTS, GATED, Clients, _refused

pytestmark = pytest.mark.slow

# `gated` loads only once gate/load exists (a slow load the test controls), and holds each
# execution while gate/release is absent (requests in flight the test controls).
GATED_LOAD = GATED.replace(
    '        self.gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]\n',
    '        self.gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]\n'
    '        while not os.path.exists(os.path.join(self.gate, "load")):\n'
    '            time.sleep(0.01)\n')


def contract_repository(root: Path, gate: Path) -> Path:
    tiny_repository(root)
    (root / "gated" / "1").mkdir(parents=True)
    (root / "gated" / "1" / "model.py").write_text(GATED_LOAD)
    (root / "gated" / "config.pbtxt").write_text(textwrap.dedent(f'''
        name: "gated"
        backend: "python"
        input [{{ name: "A" data_type: TYPE_FP32 dims: [ 4 ] }}]
        output [{{ name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }}]
        instance_group [{{ kind: KIND_CPU count: {CLIENTS} }}]
        parameters {{ key: "gate" value: {{ string_value: "{gate}" }} }}
    '''))
    return root


class Launched:
    """A runtime manifest's container, started as declared on this machine."""

    def __init__(self, manifest: Path, tmp_path: Path) -> None:
        doc = documents(manifest)[0]
        self.doc = doc
        self.container = doc["spec"]["containers"][0]
        self.ports = {8080: free_port(), 9000: free_port()}
        self.gate = tmp_path / "gate"
        self.gate.mkdir()
        (self.gate / "release").touch()
        self.models = tmp_path / "mnt" / "models"
        shutil.copytree(contract_repository(tmp_path / "repo", self.gate), self.models)
        self.before = read_only(self.models)
        tmp = tmp_path / "container-tmp"
        tmp.mkdir()

        def local(text: str) -> str:
            text = text.replace("{{.Name}}", "mobilenet").replace("/mnt/models", str(self.models))
            text = text.replace("--host=0.0.0.0", "--host=127.0.0.1")
            for declared, port in self.ports.items():
                text = text.replace(f"={declared}", f"={port}")
            return text

        command = self.container["command"]
        assert command[0] == "triserve"
        argv = [sys.executable, "-m", "triserve", *command[1:], *map(local, self.container["args"])]
        env = {e["name"]: e["value"].replace("/tmp", str(tmp)) for e in self.container.get("env", [])}
        import os

        self.log_path = tmp_path / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **env})

    def port(self, declared) -> int:
        return self.ports[int(declared)]

    def serving_port(self) -> int:
        (port,) = self.container["ports"]
        return self.port(port["containerPort"])

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout  # bounds a hang only
        while not condition():
            assert self.process.poll() is None or what == "exit", f"server exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:g}s:\n{self.log()}"
            time.sleep(0.02)

    def stop(self) -> None:
        (self.gate / "load").touch()
        (self.gate / "release").touch()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        writable(self.models)


def http_probe(launched: Launched, probe: dict) -> int | None:
    """The status an httpGet probe gets (None: no answer)."""
    get = probe["httpGet"]
    try:
        return httpx.get(f"http://127.0.0.1:{launched.port(get['port'])}{get['path']}", timeout=5).status_code
    except httpx.TransportError:
        return None


def tcp_probe(launched: Launched, probe: dict) -> bool:
    return not _refused(launched.port(probe["tcpSocket"]["port"]))


def grpc_probe(launched: Launched, probe: dict) -> int | None:
    """grpc.health.v1 Check's status on the probe's port (kubelet's gRPC probe)."""
    with grpc.insecure_channel(f"127.0.0.1:{launched.port(probe['grpc']['port'])}") as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        except grpc.RpcError:
            return None


def _drain(launched: Launched, port: int) -> None:
    """SIGTERM with CLIENTS requests in flight: listener closed, each answered 200, exit 0."""
    clients = Clients(port)
    launched.wait(lambda: clients.ok >= 8, "load")
    (launched.gate / "release").unlink()
    launched.wait(lambda: len(list(launched.gate.glob("blocked-*"))) == CLIENTS, "requests in flight")
    ok = clients.ok
    launched.process.send_signal(signal.SIGTERM)
    launched.wait(lambda: _refused(port), "listener close")
    (launched.gate / "release").touch()
    launched.wait(clients.done, "client end")
    launched.wait(lambda: launched.process.poll() is not None, "exit")
    assert launched.process.returncode == 0, launched.log()
    assert clients.failures == [] and clients.ok == ok + CLIENTS


def test_the_http_runtime_keeps_kserves_contract(tmp_path):
    launched = Launched(DEPLOY / "kserve" / "clusterservingruntime.yaml", tmp_path)
    container = launched.container
    try:
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        launched.wait(lambda: http_probe(launched, startup) == 200, "startup probe success", timeout=budget)
        # a model still loading: live, not ready
        assert http_probe(launched, container["readinessProbe"]) == 503
        assert http_probe(launched, container["livenessProbe"]) == 200
        (launched.gate / "load").touch()
        launched.wait(lambda: http_probe(launched, container["readinessProbe"]) == 200, "readiness")
        assert http_probe(launched, container["livenessProbe"]) == 200
        port = launched.serving_port()
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                           {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
        infer = httpx.post(f"http://127.0.0.1:{port}/v2/models/simple/infer", json=body, timeout=60)
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == [i + 1 for i in range(16)]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models/simple", timeout=60).status_code == 200  # TF Serving REST
        assert httpx.get(f"http://127.0.0.1:{port}/ping", timeout=60).json() == {"status": "Healthy"}  # TorchServe
        annotations = launched.doc["spec"]["annotations"]
        metrics_port = launched.port(annotations["prometheus.kserve.io/port"])
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}{annotations['prometheus.kserve.io/path']}", timeout=60)
        assert metrics.status_code == 200 and 'nv_inference_request_success{model="simple",version="1"} 1' in metrics.text
        _drain(launched, port)
        assert unchanged(launched.models, launched.before)
    finally:
        launched.stop()


def test_the_grpc_runtime_keeps_kserves_contract(tmp_path):
    import tritonclient.grpc as grpcclient

    launched = Launched(DEPLOY / "kserve" / "clusterservingruntime-grpc.yaml", tmp_path)
    container = launched.container
    try:
        assert container["ports"][0]["name"] == "h2c"
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        launched.wait(lambda: tcp_probe(launched, startup), "startup probe success", timeout=budget)
        assert grpc_probe(launched, container["readinessProbe"]) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert tcp_probe(launched, container["livenessProbe"])
        (launched.gate / "load").touch()
        # the health service's status follows readiness within its refresh period
        launched.wait(lambda: grpc_probe(launched, container["readinessProbe"]) == health_pb2.HealthCheckResponse.SERVING,
                      "readiness")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{launched.serving_port()}")
        try:
            assert client.is_server_ready()
            a, b = grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")
            a.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
            b.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            assert client.infer("simple", [a, b]).as_numpy("OUTPUT0").tolist() == [[i + 1 for i in range(16)]]
        finally:
            client.close()
        launched.process.send_signal(signal.SIGTERM)
        launched.wait(lambda: launched.process.poll() is not None, "exit")
        assert launched.process.returncode == 0, launched.log()
        assert unchanged(launched.models, launched.before)
    finally:
        launched.stop()
