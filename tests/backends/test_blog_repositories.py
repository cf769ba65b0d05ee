"""The blog's tfmobilenet and torchmobilenet folders, served as written, classified with `triserve classify`."""

from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch

from tests.conftest import photo
from triserve.examples.efficientnet_lite0 import load_labels
from triserve.vision.images import image_client_preprocess

# Slow tier: a server subprocess and the classify client's subprocesses.
pytestmark = pytest.mark.slow


def classify(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triserve", "classify", "-u", server.url, *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("model, layout", [("tfmobilenet", "NHWC"), ("torchmobilenet", "NCHW")])
def test_classify_reads_the_layout_from_the_config(blog_server, tfmobilenet_signature, torchmobilenet_module,
                                                   tmp_path, model, layout):
    image = tmp_path / "chelsea.png"
    photo("chelsea").save(image)
    result = classify(blog_server, str(image), "-m", model, "-c", "3")
    assert result.returncode == 0, result.stderr
    printed = [ast.literal_eval(line) for line in result.stdout.splitlines()]

    # What the framework answers for the same image, prepared as image_client prepares it.
    x = image_client_preprocess(photo("chelsea"), layout, np.dtype(np.float32), 3, 224, 224, "NONE")[None]
    if layout == "NHWC":
        scores = tfmobilenet_signature(input_1=tf.constant(x))["predictions"].numpy()[0]
    else:
        with torch.inference_mode():
            scores = torchmobilenet_module(torch.from_numpy(x)).numpy()[0]
    top = np.argsort(-scores)[:3]
    labels = load_labels()
    assert [(int(i), label) for _, i, label in printed] == [(int(i), labels[i]) for i in top]
    assert all(abs(float(value) - scores[int(i)]) < 1e-4 for value, i, _ in printed)
