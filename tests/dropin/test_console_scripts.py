"""The `triserve-dropin` distribution (dropin/ in the repository) installs the console scripts
tritonserver, torchserve and tensorflow_model_server, each the drop-in command of that name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # builds and installs a distribution with pip


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dropin")
    shutil.copytree(ROOT / "dropin", tmp / "dropin")  # built outside the repository
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(tmp / "target"), str(tmp / "dropin")],
                   check=True, capture_output=True, timeout=300)
    return tmp / "target" / "bin"


def run(script, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_the_three_commands_are_installed(scripts):
    assert sorted(p.name for p in scripts.iterdir()) == ["tensorflow_model_server", "torchserve", "tritonserver"]


def test_each_is_its_servers_command_line(scripts, tmp_path):
    help_text = run(scripts / "tritonserver", "--help")
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: tritonserver [options]")
    assert "--model-repository" in help_text.stdout and "--rate-limit" in help_text.stdout
    refused = run(scripts / "tritonserver", "--model-repository=/m", "--grpc-use-ssl=true")
    assert refused.returncode == 2 and "--grpc-use-ssl=true is not supported by triserve" in refused.stderr
    stopped = run(scripts / "torchserve", "--stop", TMPDIR=str(tmp_path))
    assert stopped.returncode == 0 and stopped.stdout == "TorchServe is not currently running.\n"
    empty = run(scripts / "tensorflow_model_server", "--port=9000")
    assert empty.returncode == 2 and "model_base_path and server_options.model_config_file are empty" in empty.stderr
