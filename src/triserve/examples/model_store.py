"""The TorchServe example: `model_store/efficientnet_lite0.mar` for the built-in image_classifier.

The TorchScript takes what TorchServe's image_classifier makes (ImageNet-normalised NCHW; the
module converts it to the network's own `(x - 127) / 128`) and answers logits, since the
handler applies the softmax. `index_to_name.json` is TorchServe's ImageNet format,
`{"0": ["n01440764", "tench"], ...}` (the handler uses a list's last element).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from triserve.archiver import write_archive

log = logging.getLogger("triserve")

HERE = Path(__file__).parent
MODEL_NAME = "efficientnet_lite0"


def index_to_name() -> dict[str, list[str]]:
    labels = (HERE / "labels.txt").read_text(encoding="utf-8").splitlines()
    wnids = (HERE / "wnids.txt").read_text(encoding="utf-8").split()
    return {str(i): [wnid, label] for i, (wnid, label) in enumerate(zip(wnids, labels, strict=True))}


def export_model_store(out: Path) -> Path:
    """Write `out/model_store/efficientnet_lite0.mar`; returns the store folder."""
    from triserve.examples import efficientnet_lite0 as enl

    store = out / "model_store"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.pt"
        diff = enl.export_torchscript(model, normalization="imagenet", softmax=False)
        labels = Path(tmp) / "index_to_name.json"
        labels.write_text(json.dumps(index_to_name()), encoding="utf-8")
        archive = write_archive(MODEL_NAME, "1.0", "image_classifier", store, serialized_file=str(model),
                                extra_files=str(labels), force=True)
    log.info("wrote %s (max difference to torch %.2g)", archive, diff)
    return store
