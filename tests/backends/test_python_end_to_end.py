"""The Python backend in a real `triserve serve` process (spawned stubs from the command line's
own interpreter), and no stub outliving a server that is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.backends.test_python import ADD_SUB, _body, _config, _model

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def test_python_models_serve_from_the_command_line_and_their_stubs_end_with_the_server(start_server, tmp_path):
    _model(tmp_path, "add_sub", ADD_SUB, _config("add_sub"))
    server = start_server("--model-repository", tmp_path)
    r = httpx.post(f"http://{server.url}/v2/models/add_sub/infer", json=_body([1, 2, 3, 4], [1, 1, 1, 1]), timeout=60)
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]}["SUM"] == [2, 3, 4, 5]
    stubs = _children(server.process.pid)
    assert stubs, "the instance runs in a process of its own"
    os.kill(server.process.pid, signal.SIGKILL)  # no shutdown: the stubs see their pipe close
    server.process.wait()
    deadline = time.monotonic() + 60  # bounds a hang only
    while any(_alive(p) for p in stubs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in stubs)
