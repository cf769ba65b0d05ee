"""SIGTERM under load on a `triserve serve --single-port` process serving a read-only model
folder: the listener closes at once, the requests in flight finish (0 failures), the process
exits 0; and with requests that never finish, it still exits 0 once --exit-timeout-secs is over."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, free_port
from tests.test_layout import read_only, unchanged, writable
from triserve.options import FRONTENDS

pytestmark = pytest.mark.slow

CLIENTS = 4

# Each execution marks itself `blocked-*` in the gate folder and waits while `release` is absent.
GATED = '''
import json, os, time, uuid
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.gate = json.loads(args["model_config"])["parameters"]["gate"]["string_value"]

    def execute(self, requests):
        release = os.path.join(self.gate, "release")
        if not os.path.exists(release):
            open(os.path.join(self.gate, "blocked-" + uuid.uuid4().hex), "w").close()
            while not os.path.exists(release):
                time.sleep(0.01)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "SUM", pb_utils.get_input_tensor_by_name(r, "A").as_numpy() * 2)]) for r in requests]
'''


def gated_repository(root: Path, gate: Path) -> Path:
    (root / "gated" / "1").mkdir(parents=True)
    (root / "gated" / "1" / "model.py").write_text(GATED)
    (root / "gated" / "config.pbtxt").write_text(textwrap.dedent(f'''
        name: "gated"
        backend: "python"
        input [{{ name: "A" data_type: TYPE_FP32 dims: [ 4 ] }}]
        output [{{ name: "SUM" data_type: TYPE_FP32 dims: [ 4 ] }}]
        instance_group [{{ kind: KIND_CPU count: {CLIENTS} }}]
        parameters {{ key: "gate" value: {{ string_value: "{gate}" }} }}
    '''))
    return root


BODY = {"inputs": [{"name": "A", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def _wait(condition, what: str, server: RunningServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # bounds a hang only
    while not condition():
        assert server.process.poll() is None or what == "exit", f"server exited:\n{server.log()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{server.log()}"
        time.sleep(0.02)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except OSError:
        return True


def _start(tmp_path: Path, grace: int) -> tuple[RunningServer, Path, Path, dict, int]:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "release").touch()
    mounted = tmp_path / "mnt" / "models"
    shutil.copytree(gated_repository(tmp_path / "repo", gate), mounted)
    before = read_only(mounted)
    port = free_port()
    zeros = [a for name in FRONTENDS for a in (f"--{name.replace('_', '-')}-port", "0")]
    server = RunningServer(["--model-repository", str(mounted), *zeros, "--single-port", str(port),
                            "--exit-timeout-secs", str(grace)], {"http": port}, tmp_path / "server.log")
    server.wait_ready()
    return server, gate, mounted, before, port


class Clients:
    """CLIENTS threads sending inference back to back until the server refuses connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.refused = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300) as client:
            while True:
                try:
                    response = client.post("/v2/models/gated/infer", json=BODY)
                except httpx.ConnectError:
                    with self.lock:
                        self.refused += 1  # never accepted: the listener is closed
                    return
                except httpx.HTTPError as e:
                    with self.lock:
                        self.failures.append(repr(e))
                    return
                with self.lock:
                    if response.status_code == 200 and response.json()["outputs"][0]["data"] == [2, 4, 6, 8]:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text}")

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)


def test_sigterm_under_load_closes_the_listener_finishes_in_flight_requests_and_exits_0(tmp_path):
    server, gate, mounted, before, port = _start(tmp_path, grace=60)
    try:
        clients = Clients(port)
        _wait(lambda: clients.ok >= 20, "load", server)  # requests flow
        (gate / "release").unlink()  # from now on each request is held in the model
        _wait(lambda: len(list(gate.glob("blocked-*"))) == CLIENTS, "requests in flight", server)
        ok_before = clients.ok
        server.process.send_signal(signal.SIGTERM)
        _wait(lambda: _refused(port), "listener close", server)  # new connections refused ...
        assert server.process.poll() is None  # ... while the requests in flight still run
        assert clients.ok == ok_before
        (gate / "release").touch()
        _wait(clients.done, "client end", server)
        _wait(lambda: server.process.poll() is not None, "exit", server)
        assert server.process.returncode == 0, server.log()
        assert clients.failures == []
        assert clients.ok == ok_before + CLIENTS  # every request in flight at SIGTERM answered 200
        assert clients.refused == CLIENTS
        assert "shutting down: finishing in-flight requests" in server.log()
        assert unchanged(mounted, before)
    finally:
        (gate / "release").touch()
        server.stop()
        writable(mounted)


def test_requests_that_never_finish_do_not_keep_the_server_past_its_exit_timeout(tmp_path):
    server, gate, mounted, _, port = _start(tmp_path, grace=2)
    try:
        (gate / "release").unlink()
        clients = Clients(port)
        _wait(lambda: len(list(gate.glob("blocked-*"))) == CLIENTS, "requests in flight", server)
        server.process.send_signal(signal.SIGTERM)
        _wait(lambda: server.process.poll() is not None, "exit", server)  # the model still holds them
        assert server.process.returncode == 0, server.log()
    finally:
        (gate / "release").touch()
        server.stop()
        writable(mounted)
    assert sys.platform != "win32" and os.name == "posix"
