"""`triserve classify` prints Triton image_client-style lines, as the blog shows them."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import CAT_CLASSES, ESPRESSO, photo

# Slow tier: the classify command against a server of the example models.
pytestmark = pytest.mark.slow


def classify(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triserve", "classify", "-u", server.url, *args],
        capture_output=True, text=True, timeout=60,
    )


def test_classify_prints_blog_lines(example_server, tmp_path):
    image = tmp_path / "chelsea.jpg"
    photo("chelsea").save(image)
    result = classify(example_server, str(image), "-m", "efficientnet_lite0_onnx")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    value, index, label = ast.literal_eval(lines[0])
    assert int(index) in CAT_CLASSES and label.endswith("cat") or label == "tabby"
    assert 0 < float(value) <= 1 and len(value) == 8  # '0.xxxxxx'


def test_classify_a_folder_in_batches(example_server, tmp_path):
    photo("chelsea").save(tmp_path / "a_chelsea.png")
    photo("coffee").save(tmp_path / "b_coffee.jpg")
    result = classify(example_server, str(tmp_path), "-m", "efficientnet_lite0_onnx", "-b", "2", "-c", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("a_chelsea.png:") and lines[2].endswith("b_coffee.jpg:")
    assert int(ast.literal_eval(lines[1])[1]) in CAT_CLASSES
    assert ast.literal_eval(lines[3])[1:] == [str(ESPRESSO), "espresso"]


def test_classify_unknown_model_is_a_clear_error(example_server, tmp_path):
    image = tmp_path / "x.jpg"
    photo("coffee").save(image)
    result = classify(example_server, str(image), "-m", "nope")
    assert result.returncode == 1
    assert "unknown model" in result.stderr and "Traceback" not in result.stderr
