"""Soak: a real `triserve serve` (the example ONNX model and SavedModel, and the example TorchServe
archive) driven by 8 mixed clients at once: v2 HTTP with binary tensors, v2 gRPC, TorchServe
JPEG, TF Serving REST, and statistics and metrics scrapes. Every answer is checked for its value
(the right top-1 class of a real photo; counters that never go back and count no failure) and
the server's RSS is sampled every second.

Held: zero errors, zero wrong answers, and after the warm-up RSS max - mean <= 32 MB and
end / start <= 1.10. A handler that leaks on purpose shows the RSS check can fail.

CI runs 2 minutes; the manual 2-hour run (-s prints the request counts and RSS figures):
    .venv/bin/python -m pytest -s tests/hostile/test_soak.py -k mixed_clients --soak-seconds 7200
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CAT_CLASSES, ESPRESSO, RunningServer, jpeg_bytes, pixels_nchw
from tests.hostile.soak_support import MB, RSS, Client, Tally, WrongAnswer, soak
from tests.torchserve_archives import torch_model_archiver

WARMUP = 30  # RSS samples (seconds) left out: arenas and allocator pools grow while batch sizes vary
CONTROL_SECONDS = 20
CONTROL_WARMUP = 3
LEAK_PER_REQUEST = 1024 * 1024  # large enough that even a few hundred requests on a busy machine show it
ONNX, TF, ARCHIVE = "efficientnet_lite0_onnx", "efficientnet_lite0_tf", "efficientnet_lite0"
PHOTOS = {"chelsea": CAT_CLASSES, "coffee": {ESPRESSO}}  # the right top-1 classes of each photo


# -- the RSS check on synthetic samples (fast) --------------------------------------------------------
def steady(count: int, level: int = 500 * MB) -> list[int]:
    return [level + (i % 5) * MB for i in range(count)]  # a few MB of noise


def test_steady_memory_passes_the_rss_check():
    figures = RSS.of(steady(120), warmup=30)
    assert figures.problems() == []
    assert figures.start == 500 * MB and figures.max == 504 * MB and figures.mean == pytest.approx(502 * MB, rel=0.01)


def test_growth_during_the_warmup_is_left_out():
    samples = [100 * MB + i * 10 * MB for i in range(30)] + steady(90)
    assert RSS.of(samples, warmup=30).problems() == []
    assert len(RSS.of(samples, warmup=0).problems()) == 2


def test_a_steady_leak_fails_on_spread_and_growth():
    samples = [500 * MB + i * MB for i in range(150)]  # 1 MB a second: 530 MB to 649 MB
    problems = RSS.of(samples, warmup=30).problems()
    assert problems == ["RSS max - mean is 59.5 MB (limit 32 MB)", "RSS end / start is 1.225 (limit 1.1)"]


def test_a_spike_fails_on_spread_alone():
    samples = steady(120)
    samples[80] += 200 * MB  # 700 MB against a mean of 504 MB
    assert RSS.of(samples, warmup=30).problems() == ["RSS max - mean is 195.8 MB (limit 32 MB)"]


def test_slow_growth_within_the_spread_fails_on_growth_alone():
    samples = [400 * MB + i * MB // 2 for i in range(120)]  # 45 MB over 90 s: spread 22 MB, growth 10.7 %
    assert RSS.of(samples, warmup=30).problems() == ["RSS end / start is 1.107 (limit 1.1)"]


def test_too_few_samples_cannot_be_checked():
    with pytest.raises(ValueError, match="fewer than 2"):
        RSS.of(steady(31), warmup=30)


# -- the clients ----------------------------------------------------------------------------------------
def top1(scores: np.ndarray | list) -> list[int]:
    return [int(i) for i in np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)]


def check_classes(photos: list[str], classes: list[int]) -> None:
    for name, got in zip(photos, classes, strict=True):
        if got not in PHOTOS[name]:
            raise WrongAnswer(f"{name}: top-1 class {got}, expected one of {sorted(PHOTOS[name])}")


def v2_binary(url: str, photos: list[str]) -> Client:
    """POST /v2/models/ONNX/infer with the binary tensor extension, in and out."""
    batch = np.stack([pixels_nchw(p) for p in photos])
    header = orjson.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    })
    body = header + batch.tobytes()

    def start():
        client = httpx.Client(base_url=f"http://{url}", timeout=60)

        def request() -> None:
            response = client.post(f"/v2/models/{ONNX}/infer", content=body,
                                   headers={"Inference-Header-Content-Length": str(len(header))})
            response.raise_for_status()
            length = int(response.headers["inference-header-content-length"])
            (output,) = orjson.loads(response.content[:length])["outputs"]
            scores = np.frombuffer(response.content[length:], dtype="<f4").reshape(output["shape"])
            check_classes(photos, top1(scores))

        return request

    return Client(f"v2 HTTP binary {'+'.join(photos)}", start)


def v2_grpc(url: str, photos: list[str]) -> Client:
    batch = np.stack([pixels_nchw(p) for p in photos])

    def start():
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput("output")]

        def request() -> None:
            result = client.infer(ONNX, [tensor], outputs=outputs, client_timeout=60)
            check_classes(photos, top1(result.as_numpy("output")))

        return request

    return Client(f"v2 gRPC {'+'.join(photos)}", start)


def torchserve_jpeg(port: int, photo: str) -> Client:
    """PUT /predictions/ARCHIVE with a JPEG (curl -T); the answer is the top 5 labels."""
    from triserve.examples.model_store import index_to_name

    labels = {names[-1] for i, names in index_to_name().items() if int(i) in PHOTOS[photo]}
    image = jpeg_bytes(photo)

    def start():
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def request() -> None:
            response = client.put(f"/predictions/{ARCHIVE}", content=image)
            response.raise_for_status()
            label = next(iter(response.json()))
            if label not in labels:
                raise WrongAnswer(f"{photo}: top-1 label {label!r}, expected one of {sorted(labels)}")

        return request

    return Client(f"TorchServe JPEG {photo}", start)


def tfserving_rest(port: int, photo: str) -> Client:
    """POST /v1/models/TF:predict, row format, pixels NHWC."""
    pixels = np.ascontiguousarray(pixels_nchw(photo).transpose(1, 2, 0))
    body = orjson.dumps({"instances": [pixels]}, option=orjson.OPT_SERIALIZE_NUMPY)

    def start():
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def request() -> None:
            response = client.post(f"/v1/models/{TF}:predict", content=body, headers={"content-type": "application/json"})
            response.raise_for_status()
            check_classes([photo], top1(response.json()["predictions"]))

        return request

    return Client(f"TF Serving REST {photo}", start)


def statistics(url: str) -> Client:
    """GET /v2/models/stats: success counts never go back, no request failed."""

    def start():
        client = httpx.Client(base_url=f"http://{url}", timeout=60)
        seen: dict[tuple[str, str], int] = {}

        def request() -> None:
            response = client.get("/v2/models/stats")
            response.raise_for_status()
            for model in response.json()["model_stats"]:
                key = (model["name"], model["version"])
                success, failed = (model["inference_stats"][k]["count"] for k in ("success", "fail"))
                if failed or success < seen.get(key, 0):
                    raise WrongAnswer(f"{key}: success {success} (was {seen.get(key)}), fail {failed}")
                seen[key] = success
            if not {(ONNX, "1"), (TF, "1")} <= set(seen):
                raise WrongAnswer(f"statistics list {sorted(seen)}")

        return request

    return Client("statistics", start, pause=0.5)


def metrics(port: int) -> Client:
    """GET :METRICS/metrics (Prometheus text): the same for nv_inference_request_success / _failure."""

    def start():
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        seen: dict[str, float] = {}

        def request() -> None:
            response = client.get("/metrics")
            response.raise_for_status()
            # the parser names counter samples NAME_total; the families keep Triton's names
            samples = [(f.name, s) for f in text_string_to_metric_families(response.text) for s in f.samples]
            for name, sample in samples:
                model = sample.labels.get("model", "")
                if name == "nv_inference_request_failure" and sample.value:
                    raise WrongAnswer(f"{model}: {sample.value} failed requests")
                if name == "nv_inference_request_success":
                    if sample.value < seen.get(model, 0):
                        raise WrongAnswer(f"{model}: success went from {seen[model]} to {sample.value}")
                    seen[model] = sample.value
            if ONNX not in seen:
                raise WrongAnswer(f"no nv_inference_request_success for {ONNX}")

        return request

    return Client("metrics", start, pause=0.5)


def report(tallies: dict[str, Tally], samples: list[int], warmup: int) -> str:
    lines = [f"{name}: {t.requests} requests, {t.errors} errors, {t.wrong} wrong" for name, t in tallies.items()]
    lines += [problem for t in tallies.values() for problem in t.first_problems]
    lines.append(f"{len(samples)} RSS samples, warm-up {warmup}: {RSS.of(samples, warmup)}")
    return "\n".join(lines)


# -- the soak ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soak_seconds(request: pytest.FixtureRequest) -> float:
    return request.config.getoption("--soak-seconds")


@pytest.fixture(scope="module")
def soak_server(start_server, example_repo: Path, tmp_path_factory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("soak_repo")
    for model in (ONNX, TF):
        shutil.copytree(example_repo / model, repo / model)
    server = start_server(
        "--model-repository", repo, "--model-store", example_repo.parent / "model_store", "--models", "all",
        frontends=("http", "grpc", "metrics", "torchserve_inference", "tfserving_rest"),
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_mixed_clients_get_right_answers_in_steady_memory(soak_server: RunningServer, soak_seconds: float):
    ports, url = soak_server.ports, soak_server.url
    grpc_url = f"127.0.0.1:{ports['grpc']}"
    clients = [
        v2_binary(url, ["chelsea"]),
        v2_binary(url, ["coffee", "chelsea"]),
        v2_grpc(grpc_url, ["coffee"]),
        v2_grpc(grpc_url, ["chelsea", "coffee", "chelsea"]),
        torchserve_jpeg(ports["torchserve_inference"], "chelsea"),
        tfserving_rest(ports["tfserving_rest"], "coffee"),
        statistics(url),
        metrics(ports["metrics"]),
    ]
    tallies, samples = soak(clients, soak_server.process.pid, soak_seconds)
    summary = report(tallies, samples, WARMUP)
    print(f"\nsoak of {soak_seconds:.0f} s\n{summary}")
    assert all(t.requests and not t.errors and not t.wrong for t in tallies.values()), summary
    assert RSS.of(samples, WARMUP).problems() == [], summary


# -- the control: a leak the RSS check must see --------------------------------------------------------
LEAKY_HANDLER = f"""
LEAKED = []  # every request's buffer stays reachable: the leak


def handle(data, context):
    if data is None:  # initialisation
        return None
    LEAKED.append(b"\\x01" * {LEAK_PER_REQUEST})  # written, so resident
    return [len(LEAKED) for _ in data]
"""


def leaky_client(port: int) -> Client:
    def start():
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def request() -> None:
            response = client.post("/predictions/leaky", content=b"{}", headers={"content-type": "application/json"})
            response.raise_for_status()
            count = response.json()  # the buffers its worker holds (each worker has its own)
            if not isinstance(count, int) or count < 1:
                raise WrongAnswer(f"leaked {count!r} buffers")

        return request

    return Client("TorchServe leaky", start, pause=0.05)  # up to about 20 MB a second


@pytest.mark.slow
def test_the_rss_check_flags_a_handler_that_leaks(start_server, tmp_path):
    handler = tmp_path / "leaky.py"
    handler.write_text(LEAKY_HANDLER)
    torch_model_archiver(tmp_path / "store", "leaky", "1.0", str(handler))
    server = start_server("--model-store", tmp_path / "store", "--models", "leaky.mar", "--allow-custom-handlers",
                          frontends=("torchserve_inference",))
    try:
        tallies, samples = soak([leaky_client(server.ports["torchserve_inference"])], server.process.pid, CONTROL_SECONDS)
    finally:
        server.stop()  # its leaked memory goes with it
    summary = report(tallies, samples, CONTROL_WARMUP)
    print(f"\nleak control\n{summary}")
    (tally,) = tallies.values()
    assert tally.requests and not tally.errors and not tally.wrong, summary
    assert len(RSS.of(samples, CONTROL_WARMUP).problems()) == 2, summary  # spread and growth
