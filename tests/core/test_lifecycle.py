"""Model control modes, the repository API, and reloads that lose no request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_CLASSES, ESPRESSO, pixels_nchw

# Slow tier: servers of the exported example model in subprocesses.
pytestmark = pytest.mark.slow

BASE = "efficientnet_lite0_onnx"


def copy_model(example_repo, repo, name: str, config: str | None = None):
    folder = repo / name
    shutil.copytree(example_repo / BASE, folder)
    text = (folder / "config.pbtxt").read_text().replace(f'name: "{BASE}"', f'name: "{name}"')
    (folder / "config.pbtxt").write_text(config if config is not None else text)
    return folder


def top1(client, model: str, photo: str = "coffee", batch: int = 1) -> int:
    x = np.stack([pixels_nchw(photo)] * batch)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return int(client.infer(model, [inp]).as_numpy("output")[0].argmax())


@pytest.fixture(scope="module")
def explicit_repo(example_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("explicit")
    copy_model(example_repo, repo, "first")
    copy_model(example_repo, repo, "second")
    copy_model(example_repo, repo, "third")
    return repo


@pytest.fixture(scope="module")
def explicit(start_server, explicit_repo):
    server = start_server("--model-repository", explicit_repo, "--model-control-mode", "explicit", "--load-model", "third")
    with httpclient.InferenceServerClient(server.url) as client:
        yield server, client


def test_explicit_mode_loads_only_what_is_asked(explicit):
    _, client = explicit
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["first"] == {"name": "first"}  # never loaded
    assert index["third"]["state"] == "READY"  # --load-model
    with pytest.raises(InferenceServerException) as e:
        top1(client, "first")
    assert "unknown model" in e.value.message()


def test_explicit_load_infer_unload(explicit):
    _, client = explicit
    client.load_model("first")
    assert client.is_model_ready("first")
    assert top1(client, "first") == ESPRESSO
    client.unload_model("first")
    assert not client.is_model_ready("first")
    with pytest.raises(InferenceServerException) as e:
        top1(client, "first")
    assert e.value.status() == "503" and "no available versions" in e.value.message()
    assert {row["name"]: row for row in client.get_model_repository_index()}["first"]["state"] == "UNAVAILABLE"


def test_load_with_a_config_override_takes_effect(explicit):
    _, client = explicit
    override = ('{"name": "second", "platform": "onnxruntime_onnx", "max_batch_size": 2,'
                ' "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],'
                ' "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [1000]}]}')
    client.load_model("second", config=override)
    assert client.get_model_config("second")["max_batch_size"] == 2
    assert top1(client, "second", batch=2) == ESPRESSO
    with pytest.raises(InferenceServerException) as e:
        top1(client, "second", batch=3)
    assert "batch-size must be <= 2" in e.value.message()


def test_load_from_file_parameters(explicit, example_repo):
    _, client = explicit
    config = ('{"name": "uploaded", "max_batch_size": 4, "input": [{"name": "input", "data_type": "TYPE_FP32",'
              ' "dims": [3, 224, 224]}], "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [1000]}]}')
    model = (example_repo / BASE / "1" / "model.onnx").read_bytes()
    client.load_model("uploaded", config=config, files={"file:1/model.onnx": model})
    assert top1(client, "uploaded", "chelsea") in CAT_CLASSES
    with pytest.raises(InferenceServerException) as e:
        client.load_model("evil", config=config, files={"file:../1/model.onnx": model})
    assert "inside the model folder" in e.value.message()


def test_failed_reload_keeps_the_old_version_serving(explicit):
    _, client = explicit
    client.load_model("third")
    with pytest.raises(InferenceServerException):
        client.load_model("third", config='{"name": "third", "max_batch_size": 8, "input": [{"name": "nope",'
                          ' "data_type": "TYPE_FP32", "dims": [3, 224, 224]}], "output": [{"name": "output",'
                          ' "data_type": "TYPE_FP32", "dims": [1000]}]}')
    assert client.is_model_ready("third")
    assert top1(client, "third") == ESPRESSO


def test_load_and_unload_refused_outside_explicit_mode(example_server):
    with httpclient.InferenceServerClient(example_server.url) as client:
        with pytest.raises(InferenceServerException) as e:
            client.unload_model(BASE)
        assert "not allowed" in e.value.message()
        assert client.is_model_ready(BASE)


def wait_until(condition, what: str, timeout: float = 120) -> None:
    """Poll `condition` until it holds; the deadline only bounds how long a broken server is waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not after {timeout}s: {what}")
        time.sleep(0.01)


def _hammer(url: str, model: str, stop: threading.Event, answers: list, failures: list) -> None:
    with httpclient.InferenceServerClient(url) as client:
        while not stop.is_set():
            try:
                answers.append(top1(client, model))
            except InferenceServerException as e:
                failures.append(e.message())


def test_reloads_under_load_lose_no_request(explicit):
    server, client = explicit
    client.load_model("third")
    stop, answers, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_hammer, args=(server.url, "third", stop, answers, failures)) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        for _ in range(6):
            client.load_model("third")  # a reload: new instances, atomic swap, old ones drain
            answered = len(answers)  # every reload is followed by answers of the version it swapped in
            wait_until(lambda: len(answers) >= answered + 2 or failures, "two answers after a reload")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert failures == []
    assert len(answers) > 10 and set(answers) == {ESPRESSO}


def test_unload_under_load_fails_only_with_clear_errors(explicit):
    server, client = explicit
    client.load_model("second")
    stop, answers, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_hammer, args=(server.url, "second", stop, answers, failures)) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: len(answers) >= 2, "answers before the unload")
        client.unload_model("second")
        wait_until(lambda: len(failures) >= 2, "errors after the unload")
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert answers and set(answers) == {ESPRESSO}
    assert failures and all("unknown model" in f or "unloaded" in f or "being unloaded" in f for f in failures)


def index_state(client, name: str) -> str:
    return {row["name"]: row.get("state", "") for row in client.get_model_repository_index()}.get(name, "")


def test_server_stays_responsive_while_a_model_loads(explicit, explicit_repo, example_repo):
    """Other requests are answered while a load is in progress. The load is held in progress by
    its config.pbtxt, a named pipe that the loader's read waits on until the test writes it."""
    server, client = explicit
    folder = copy_model(example_repo, explicit_repo, "gated")
    config = folder / "config.pbtxt"
    text = config.read_text()
    config.unlink()
    os.mkfifo(config)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            with open(config, "w") as pipe:  # the loader's read gets the config, and the load goes on
                pipe.write(text)
            released = True

    def load() -> None:
        with httpclient.InferenceServerClient(server.url) as own:  # gevent clients stay in their thread
            own.load_model("gated")

    loader = threading.Thread(target=load)
    loader.start()
    try:
        with httpclient.InferenceServerClient(server.url) as other:
            wait_until(lambda: index_state(other, "gated") == "LOADING", "the load to start")
            answers = [other.is_server_live() and top1(other, "third") for _ in range(5)]
            assert index_state(other, "gated") == "LOADING"  # all five answered while the load was in progress
            release()
            while loader.is_alive():  # and while it builds the model's instances
                assert top1(other, "third") == ESPRESSO
    finally:
        if loader.is_alive() and index_state(client, "gated") == "LOADING":
            release()  # never leave the server's loader waiting on the pipe
        loader.join()
        config.unlink()
        config.write_text(text)  # a plain file again, for anything that reads the folder later
    assert answers == [ESPRESSO] * 5
    assert client.is_model_ready("gated")
    assert top1(client, "gated") == ESPRESSO


def test_poll_mode_follows_the_repository(start_server, example_repo, tmp_path):
    copy_model(example_repo, tmp_path, "present")
    server = start_server("--model-repository", tmp_path, "--model-control-mode", "poll",
                          "--repository-poll-secs", "0.5")
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("present")
        staging = tmp_path.parent / f"{tmp_path.name}-staging"
        copy_model(example_repo, staging, "arrived")
        shutil.move(staging / "arrived", tmp_path / "arrived")
        shutil.rmtree(tmp_path / "present")
        wait_until(lambda: client.is_model_ready("arrived") and not client.is_model_ready("present"), "a poll")
        assert client.is_model_ready("arrived")
        assert top1(client, "arrived") == ESPRESSO
        assert not client.is_model_ready("present")


CYCLES = """
import asyncio, json, sys
from pathlib import Path

import numpy as np
import psutil

from triserve.core.dataplane import DataPlane
from triserve.core.manager import ModelManager
from triserve.core.memory import limit_arenas
from triserve.core.types import InferRequest
from triserve.repository.triton import TritonRepositories

limit_arenas()  # as `triserve serve` does at start


async def cycles():
    manager = ModelManager([TritonRepositories([Path(sys.argv[1])])], control_mode="explicit")
    manager.refresh_names()
    x = np.zeros((1, 3, 224, 224), np.float32)
    rss = []
    for _ in range(5 + 50):
        await manager.load("cycled")
        await DataPlane(manager).resolve("cycled").infer(InferRequest({"input": x}))
        await manager.unload("cycled")
        rss.append(psutil.Process().memory_info().rss)
    await manager.close()
    print(json.dumps(rss[5:]))


asyncio.run(cycles())
"""


def test_fifty_load_unload_cycles_do_not_grow_memory(example_repo, tmp_path):
    """Unload frees memory. In a fresh process like a server's, after 5 warm-up cycles: RSS over
    the last 10 of 50 load/infer/unload cycles within 5% of RSS over the first 10 (medians)."""
    repo = tmp_path / "repo"
    copy_model(example_repo, repo, "cycled", config=(
        'name: "cycled"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }\n'
        'output { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] }\n'))
    done = subprocess.run([sys.executable, "-c", CYCLES, str(repo)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rss = json.loads(done.stdout)
    first, last = np.median(rss[:10]), np.median(rss[-10:])
    growth = (last - first) / first
    print(f"\nRSS over cycles 1-10: {first / 2**20:.1f} MiB, over cycles 41-50: {last / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth < 0.05
