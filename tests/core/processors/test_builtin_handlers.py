"""TorchServe's built-in object_detector, image_segmenter and text_classifier handlers, each
against a small TorchScript model this test builds, archived by the real torch-model-archiver and
served through the TorchServe inference API in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.protocols.torchserve.support import archive_dataplane, client, jpeg
from tests.torchserve_archives import torch_model_archiver
from triserve.core.processors.text_classifier import basic_english, clean, ngrams
from triserve.protocols.torchserve.inference import TorchServeInference

pytestmark = pytest.mark.anyio


class Detector(torch.nn.Module):
    """Two detections: the whole image (scored by its mean brightness, class 1) and a fixed small
    box that always scores 0.2 (class 2, under TorchServe's 0.5 threshold)."""

    def forward(self, image: torch.Tensor):
        h, w = image.shape[1], image.shape[2]
        boxes = torch.tensor([[0.0, 0.0, float(w), float(h)], [1.0, 1.0, 2.0, 2.0]])
        labels = torch.tensor([1, 2], dtype=torch.int64)
        scores = torch.stack([image.mean(), torch.tensor(0.2)])
        return boxes, labels, scores


class Segmenter(torch.nn.Module):
    """Two classes per pixel: class 1 scores the red channel, class 0 the blue one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 2], x[:, 0]], dim=1) * 4


class Bag(torch.nn.Module):
    """An EmbeddingBag text classifier as TorchServe's example: class i scores token i's count."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocabulary, vocabulary, mode="sum")
        with torch.no_grad():
            self.embedding.weight.copy_(torch.eye(vocabulary) * 3)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.embedding(text, offsets)


def _archive(root: Path, name: str, handler: str, module: torch.nn.Module, extra: list[Path]) -> None:
    model = root / name / "model.pt"
    model.parent.mkdir(parents=True)
    torch.jit.script(module).save(str(model))
    torch_model_archiver(root / "out", name, "1.0", handler, serialized=model, extra=extra)
    (root / "out" / f"{name}.mar").rename(root / "store" / f"{name}.mar")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("builtin_handlers")
    (root / "store").mkdir()
    labels = root / "index_to_name.json"
    labels.write_text(json.dumps({"0": "background", "1": ["n0001", "person"], "2": "cat"}))
    _archive(root, "detector", "object_detector", Detector(), [labels])
    _archive(root, "segmenter", "image_segmenter", Segmenter(), [])
    vocab = {"<unk>": 0, "good": 1, "bad": 2, "not": 3, "not bad": 4, "movie": 5}
    vocab_file = root / "source_vocab.pt"
    torch.save(vocab, vocab_file)
    news = root / "text" / "index_to_name.json"
    news.parent.mkdir()
    news.write_text(json.dumps({str(i): name for i, name in enumerate(["unknown", "good", "bad", "not", "not bad", "movie"])}))
    _archive(root, "texts", "text_classifier", Bag(len(vocab)), [vocab_file, news])
    return root / "store"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_object_detector_answers_boxes_labels_and_scores_above_the_threshold(store):
    async with archive_dataplane(store, "detector.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            white = await inference.post("/predictions/detector", content=png(np.full((30, 40, 3), 255)))
            dark = await inference.post("/predictions/detector", content=png(np.full((30, 40, 3), 51)))
            two = await inference.post("/predictions/detector", files=[("data", png(np.zeros((8, 8, 3)))),
                                                                       ("data", png(np.zeros((8, 8, 3))))])
    assert white.status_code == 200, white.text
    # ToTensor keeps the image's own size (40 x 30), class 1 is "person" (a list label's last name)
    assert white.json() == [{"person": [0.0, 0.0, 40.0, 30.0], "score": 1.0}]
    assert dark.json() == []  # a mean of 0.2: nothing reaches 0.5
    assert two.status_code == 400  # one image per request


async def test_image_segmenter_answers_the_best_class_and_its_probability_per_pixel(store):
    async with archive_dataplane(store, "segmenter.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            red = await inference.post("/predictions/segmenter", content=jpeg((255, 0, 0), (300, 260)))
            blue = await inference.post("/predictions/segmenter", content=jpeg((0, 0, 255), (256, 256)))
    assert red.status_code == 200, red.text
    mask = np.array(red.json())
    assert mask.shape == (224, 224, 2)  # [H][W][class, probability] after Resize 256, CenterCrop 224
    assert set(np.unique(mask[..., 0])) == {1.0} and np.all(mask[..., 1] > 0.99)
    assert set(np.unique(np.array(blue.json())[..., 0])) == {0.0}


async def test_text_classifier_tokenises_as_torchserve_and_answers_every_class(store):
    async with archive_dataplane(store, "texts.mar") as dataplane:
        async with client(TorchServeInference(dataplane).app()) as inference:
            good = await inference.post("/predictions/texts", content=b"<b>GOOD</b> movie!")
            not_bad = await inference.post("/predictions/texts", content="It's not bad, caf\u00e9.".encode())
            other = await inference.post("/predictions/texts", content=b"\xff\xfe")
    assert good.status_code == 200, good.text
    scores = good.json()
    assert list(scores) == ["unknown", "good", "bad", "not", "not bad", "movie"]
    assert abs(sum(scores.values()) - 1) < 1e-5
    # "good", "movie" and the bigram "good movie" (not in the vocabulary: <unk>) count once each
    assert scores["good"] == scores["movie"] == scores["unknown"] > scores["bad"]
    words = not_bad.json()
    # "it is not bad cafe": it/is/cafe unknown, "not", "bad" and the bigram "not bad" known
    assert words["not"] == words["bad"] == words["not bad"] and words["unknown"] > words["not"]
    assert other.status_code == 400


def test_text_cleanup_and_tokens_follow_torchserve():
    assert clean("<p>Don't STOP</p> &amp; na\u00efve, ok?") == "do not stop  naive ok"
    assert basic_english("Hello, World. (yes)") == ["hello", ",", "world", ".", "(", "yes", ")"]
    assert list(ngrams(["here", "we", "are"])) == ["here", "we", "are", "here we", "we are"]


async def test_a_pickled_vocabulary_object_fails_to_load_with_a_reason(tmp_path):
    (tmp_path / "store").mkdir()
    vocab = tmp_path / "source_vocab.pt"
    torch.save({"good": Path("x")}, vocab)  # not plain data: weights_only refuses it
    _archive(tmp_path, "pickled", "text_classifier", Bag(2), [vocab])
    async with archive_dataplane(tmp_path / "store", "pickled.mar") as dataplane:
        status = dataplane.status("pickled")
    assert not status.ready_versions and "torchtext" in status.reason
