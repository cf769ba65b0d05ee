"""`triserve serve` subprocesses for the benchmark, with only the front ends a section needs."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from triserve.bench.load import HOST


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_listening(process: subprocess.Popen, ports: list[int], log: Path, timeout: float = 300) -> None:
    """Front ends start only once every model has loaded, so listening ports mean ready."""
    deadline = time.monotonic() + timeout
    waiting = list(ports)
    while waiting:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection((HOST, waiting[0]), timeout=0.5).close()
            waiting.pop(0)
        except OSError:
            time.sleep(0.2)


@dataclass(frozen=True)
class RunningServer:
    ports: dict[str, int]  # front end name -> port (0: off)
    pid: int


@contextlib.contextmanager
def running_server(args: list[str], frontends: tuple[str, ...], log: Path) -> Iterator[RunningServer]:
    """A `triserve serve ARGS` subprocess with only `frontends` on, on free ports.
    A model that fails to load stops it (--exit-on-error), with the reason from `log`."""
    from triserve.options import FRONTENDS

    ports = {name: _free_port() if name in frontends else 0 for name in FRONTENDS}
    flags = [text for name, port in ports.items() for text in (f"--{name.replace('_', '-')}-port", str(port))]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "triserve", "serve", *args, *flags,
             "--log-level", "warning", "--exit-on-error", "true"],
            stdout=subprocess.DEVNULL, stderr=out,
        )
    try:
        _wait_listening(process, [p for p in ports.values() if p], log)
        yield RunningServer(ports, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def link_repository(out: Path, source: Path, names: list[str], unbatched: tuple[str, ...] = ()) -> Path:
    """A repository `out` of links to `source`'s named models, plus `<name>_no_batching` for each of `unbatched`."""
    out.mkdir()
    for name in names:
        (out / name).symlink_to((source / name).resolve(), target_is_directory=True)
    for name in unbatched:
        _without_batching(source / name, out / f"{name}_no_batching")
    return out


def _without_batching(model_dir: Path, out: Path) -> None:
    """`model_dir` as model `out.name` without dynamic batching: its files linked, its config rewritten."""
    derived_model(model_dir, out, lambda config: config.ClearField("dynamic_batching"))


def derived_model(model_dir: Path, out: Path, change: Callable[[Any], None], link_versions: bool = True) -> None:
    """`model_dir` as model `out.name`: its files linked (version folders too unless
    `link_versions` is false), its config changed by `change(config)` and rewritten."""
    from google.protobuf import text_format

    from triserve.repository.triton import read_model

    config = read_model(model_dir.name, model_dir).config
    out.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.name != "config.pbtxt" and (link_versions or not entry.name.isdigit()):
            (out / entry.name).symlink_to(entry.resolve())
    config.name = out.name
    change(config)
    (out / "config.pbtxt").write_text(text_format.MessageToString(config))
