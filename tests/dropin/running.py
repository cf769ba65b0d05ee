"""A drop-in command as a subprocess, and waiting for what it serves (the deadline only bounds a hang)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start(command: str, *args: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "triserve", command, *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_http(url: str, log: Path, process: subprocess.Popen | None = None, headers: dict | None = None,
              timeout: float = 120) -> httpx.Response:
    """GET url until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 in {timeout}s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
