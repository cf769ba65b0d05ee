"""scripts/setup and scripts/serve-examples say what they do, step by step, before any slow work."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def fresh_clone(tmp_path: Path) -> Path:
    """The scripts and pyproject.toml of a fresh clone: no .venv, no examples-out."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "scripts", clone / "scripts")
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    return clone


def run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_serve_examples_prints_its_first_step_before_setting_up(tmp_path):
    """The first line comes before scripts/setup runs (here setup fails at once: no such python),
    so on a fresh clone it is printed at once, not after minutes of installs."""
    clone = fresh_clone(tmp_path)
    done = run(clone / "scripts" / "serve-examples", {"PYTHON": str(tmp_path / "no-python")})
    assert done.returncode != 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("serve-examples: [1/3] setting up .venv (scripts/setup")
    assert lines[1] == f"setup: [1/4] creating .venv with {tmp_path / 'no-python'} ..."
    assert "no-python" in done.stderr  # the failing step's own error
    assert not (clone / "examples-out").exists()


def test_setup_names_each_step_and_its_time(tmp_path):
    """With a .venv whose pip does nothing (a stand-in python), every step is announced and timed."""
    clone = fresh_clone(tmp_path)
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\necho \"pip $*\"\n")
    (bin_dir / "python").chmod(0o755)
    done = run(clone / "scripts" / "setup", {})
    assert done.returncode == 0, done.stderr
    starts = [line for line in done.stdout.splitlines() if line.startswith("setup: [") and line.endswith("...")]
    ends = [line for line in done.stdout.splitlines() if " done in " in line]
    assert [line.split("]")[0] for line in starts] == ["setup: [1/4", "setup: [2/4", "setup: [3/4", "setup: [4/4"]
    assert len(ends) == 4 and all(line.endswith(" s") for line in ends)
    assert "torch==2.13.0" in done.stdout and done.stdout.splitlines()[-1].startswith("setup: .venv ready in ")
    again = run(clone / "scripts" / "setup", {})
    assert again.stdout.startswith("setup: .venv is up to date")
