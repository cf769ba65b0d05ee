"""Shared fixtures: the example repository, real servers on free ports, real photos."""

from __future__ import annotations

import gc
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true",
                     help="fuzz with thousands of examples per API instead of a few hundred (tests/hostile/test_fuzz.py)")
    parser.addoption("--soak-seconds", type=float, default=120.0,
                     help="how long the soak test drives the server (tests/hostile/test_soak.py; default 120,"
                          " the manual run: 7200)")


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one handed out before in this run: the OS may offer the
    port it just offered again, and two front ends asked for ports in a row would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class RunningServer:
    """A `triserve serve` subprocess; `url` is host:port of its v2 HTTP front end."""

    def __init__(self, args: list[str], ports: dict[str, int], log_path: Path) -> None:
        self.ports = ports
        self.url = f"127.0.0.1:{ports['http']}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "triserve", "serve", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def wait_ready(self, timeout: float = 300, marker: str = "triserve ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> None:
    """Each run starts with an empty triserve cache (batch calibrations), in this process and the
    servers it starts, so no run depends on what an earlier one measured on this machine."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Start servers: `start_server("--model-repository", DIR, ...)` picks free ports for every front end."""
    started: list[RunningServer] = []

    def start(*args: str, wait: bool = True, frontends: tuple[str, ...] = ("http",)) -> RunningServer:
        """Front ends named in `frontends` get free ports; every other one is switched off (port 0)."""
        from triserve.options import FRONTENDS

        ports = {name: free_port() if name in frontends else 0 for name in FRONTENDS}
        extra = []
        for name, port in ports.items():
            extra += [f"--{name.replace('_', '-')}-port", str(port)]
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = RunningServer([*map(str, args), *extra], ports, log)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def example_repo(tmp_path_factory) -> Path:
    """The example repository written by `triserve export-examples` (real ImageNet weights)."""
    out = tmp_path_factory.mktemp("examples")
    subprocess.run([sys.executable, "-m", "triserve", "export-examples", str(out)], check=True, capture_output=True)
    return out / "model_repository"


@pytest.fixture(scope="session")
def example_server(start_server, example_repo) -> RunningServer:
    return start_server("--model-repository", example_repo)


def photo(name: str) -> Image.Image:
    if name == "grace_hopper":
        import matplotlib.cbook

        return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def jpeg_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    photo(name).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pixels_nchw(name: str) -> np.ndarray:
    """A photo as the example models take it: RGB 0..255, resized to 224x224, CHW float32."""
    rgb = photo(name).convert("RGB").resize((224, 224), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))


@pytest.fixture(scope="session")
def tfserving_conf(example_repo, tmp_path_factory) -> Path:
    """A TF Serving models.conf beside its SavedModels (tests/savedmodels.py)."""
    from tests.savedmodels import tfserving_folder

    return tfserving_folder(example_repo, tmp_path_factory.mktemp("tfserving"))


@pytest.fixture(scope="session")
def tfserving_server(start_server, example_repo, tfserving_conf, tmp_path_factory) -> RunningServer:
    """The models.conf models plus the ONNX example model, on v2 HTTP and both TF Serving front ends."""
    import shutil

    repo = tmp_path_factory.mktemp("onnx_repo")
    shutil.copytree(example_repo / "efficientnet_lite0_onnx", repo / "efficientnet_lite0_onnx")
    return start_server(
        "--model-repository", repo, "--model-config-file", tfserving_conf,
        frontends=("http", "tfserving_rest", "tfserving_grpc"),
    )


@pytest.fixture
def anyio_backend() -> str:
    """In-process tests (`@pytest.mark.anyio`) run on asyncio, as the server does."""
    return "asyncio"


@pytest.fixture(autouse=True)
def frozen_heap() -> None:
    """Leave what exists before each test (imported frameworks, session fixtures) out of garbage
    collection: every model unload runs gc.collect(), which otherwise scans all of torch's and
    TensorFlow's objects, a fifth of a second each time in this process. What the last test left
    unreferenced is collected first (cheap: frozen objects are not scanned), so nothing it
    dropped, such as a grpc.aio channel bound to its closed event loop, outlives it."""
    gc.collect()
    gc.freeze()
