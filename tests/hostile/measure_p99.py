"""Measures (not a test): the p99 of `GET /v2/health/live` while one 64 MiB hostile request is
processed, for each of issue 12's cases, against a real `triserve serve` subprocess.

    ROUNDS=3 .venv/bin/python -m tests.hostile.measure_p99 [case ...]

The health checks come from their own process (so the hostile client's work never delays them),
on one kept-alive connection, one after another; only those sent while the hostile request was
in flight count. A good inference on `simple` is checked beside them.
"""

from __future__ import annotations

import gzip
import http.client
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

from tests.conftest import free_port
from tests.hostile.models import echo_repository
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

MiB = 1 << 20
ROUNDS = int(os.environ.get("ROUNDS", "3"))  # each case measured this many times
SIMPLE = orjson.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]})
SUM = [i + 1 for i in range(16)]


def poll(port: int, stop, out) -> None:
    """In its own process: health checks back to back (every tenth round a good inference, checked)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples, good, wrong, rounds = [], 0, 0, 0
    while not stop.is_set():
        started = time.time()
        connection.request("GET", "/v2/health/live")
        answer = connection.getresponse()
        answer.read()
        samples.append((started, (time.time() - started) * 1000, answer.status))
        rounds += 1
        if rounds % 10 == 0:
            connection.request("POST", "/v2/models/simple/infer", SIMPLE, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            body = reply.read()
            outputs = {o["name"]: o["data"] for o in orjson.loads(body)["outputs"]} if reply.status == 200 else {}
            good, wrong = (good + 1, wrong) if outputs.get("OUTPUT0") == SUM else (good, wrong + 1)
    out.put((samples, good, wrong))


def post(port: int, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
    answer = connection.getresponse()
    return answer.status, answer.read()


def unary(port: int, method: str, message: bytes) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(message, timeout=120)
            return "OK"
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()[:100]}"


# -- the hostile requests ---------------------------------------------------------------------
def json_numbers() -> bytes:
    """A v2 JSON body of 16.7 million FP32 numbers (just under 64 MiB) for `scores` [-1, 5]."""
    count = (64 * MiB - 200) // 4 // 5 * 5
    data = b"[" + b"0.5," * (count - 1) + b"0.5]"
    return b'{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[%d,5],"data":%s}]}' % (count // 5, data)


def json_bytes() -> bytes:
    """A v2 JSON body of BYTES strings (just under 64 MiB) to the FP32 model `scores`."""
    count = (64 * MiB - 200) // 4
    data = b"[" + b'"a",' * (count - 1) + b'"a"]'
    return b'{"inputs":[{"name":"INPUT","datatype":"BYTES","shape":[%d],"data":%s}]}' % (count, data)


def tf_instances() -> bytes:
    """TF Serving REST `instances` of 16 million numbers (just under 64 MiB), rows of 6 for `scores` [-1, 5]."""
    rows = (64 * MiB - 100) // 26
    return b'{"instances":[' + b"[0.5,0.5,0.5,0.5,0.5,0.5]," * (rows - 1) + b"[0.5,0.5,0.5,0.5,0.5,0.5]]}"


def kserve_bytes_contents() -> bytes:
    """A ModelInferRequest of 60 MiB of one-byte bytes_contents to the FP32 model `scores`."""
    count = 60 * MiB // 3
    request = pb.ModelInferRequest(model_name="scores")
    tensor = request.inputs.add(name="INPUT", datatype="BYTES", shape=[count])
    tensor.contents.bytes_contents.extend([b"a"] * count)
    return request.SerializeToString()


def tf_string_val() -> bytes:
    """A PredictRequest of 60 MiB of one-byte string_val to the FP32 model `scores`."""
    count = 60 * MiB // 3
    request = apis.PredictRequest()
    request.model_spec.name = "scores"
    tensor = request.inputs["INPUT"]
    tensor.dtype = tf.DT_STRING
    tensor.tensor_shape.dim.add(size=count)
    tensor.string_val.extend([b"a"] * count)
    return request.SerializeToString()


def json_bytes_echo() -> bytes:
    """A valid v2 JSON body of 400,000 BYTES strings to `echo` (answered 200, its answer as large)."""
    texts = [f"t{i}" for i in range(400_000)]
    return orjson.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, len(texts)], "data": [texts]}]})


def cases(ports: dict[str, int]) -> dict:
    bomb = gzip.compress(b"\0" * (1 << 30), 9)
    numbers = json_numbers()
    return {
        "idle-control": lambda: (time.sleep(3.0), ("-", b""))[1],  # no hostile request: the machine's own noise
        "v2-json-numbers": lambda: post(ports["http"], "/v2/models/scores/infer", numbers),
        "v2-gzip-bomb": lambda: post(ports["http"], "/v2/models/scores/infer", bomb, **{"Content-Encoding": "gzip"}),
        "v2-gzip-json-numbers": (lambda body: lambda: post(
            ports["http"], "/v2/models/scores/infer", body, **{"Content-Encoding": "gzip"}))(gzip.compress(numbers, 1)),
        "v2-json-bytes-to-fp32": (lambda body: lambda: post(ports["http"], "/v2/models/scores/infer", body))(json_bytes()),
        "v2-json-bytes-echo-valid": (lambda body: lambda: post(ports["http"], "/v2/models/echo/infer", body))(
            json_bytes_echo()),
        "tf-rest-instances": (lambda body: lambda: post(ports["tf_rest"], "/v1/models/scores:predict", body))(tf_instances()),
        "kserve-grpc-bytes-contents": (lambda body: lambda: unary(
            ports["grpc"], "/inference.GRPCInferenceService/ModelInfer", body))(kserve_bytes_contents()),
        "tf-grpc-string-val": (lambda body: lambda: unary(
            ports["tf_grpc"], "/tensorflow.serving.PredictionService/Predict", body))(tf_string_val()),
    }


def measure(name: str, send, http_port: int) -> None:
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    poller = context.Process(target=poll, args=(http_port, stop, out))
    poller.start()
    time.sleep(1.0)  # the poller connects and warms up
    started = time.time()
    answer = send()
    ended = time.time()
    time.sleep(0.2)
    stop.set()
    samples, good, wrong = out.get(timeout=60)
    poller.join()
    during = [ms for at, ms, status in samples if started <= at <= ended]
    failed = [status for at, ms, status in samples if status != 200]
    during_sorted = sorted(during) or [float("nan")]
    p99 = during_sorted[min(len(during_sorted) - 1, int(len(during_sorted) * 0.99))]
    status = answer[0] if isinstance(answer, tuple) else answer
    detail = answer[1][:90].decode(errors="replace") if isinstance(answer, tuple) else ""
    print(f"{name:28s} answered {status} in {(ended - started) * 1000:6.0f} ms | health checks during: {len(during):5d},"
          f" p50 {np.median(during_sorted):6.1f} ms, p99 {p99:6.1f} ms, max {max(during_sorted):6.1f} ms"
          f" | good inferences {good} right, {wrong} wrong, non-200 health {len(failed)} | {detail}", flush=True)


def main(selected: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="p99-"))
    echo_repository(root / "models")
    ports = {"http": free_port(), "grpc": free_port(), "tf_rest": free_port(), "tf_grpc": free_port()}
    command = [str(Path(sys.executable).parent / "triserve"), "serve", "--model-repository", str(root / "models"),
               "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
               "--tfserving-rest-port", str(ports["tf_rest"]), "--tfserving-grpc-port", str(ports["tf_grpc"]),
               "--metrics-port", "0", "--torchserve-inference-port", "0", "--torchserve-management-port", "0",
               "--torchserve-metrics-port", "0", "--torchserve-grpc-inference-port", "0",
               "--torchserve-grpc-management-port", "0", "--no-access-log"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"))
    try:
        for _ in range(600):
            try:
                connection = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=1)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not get ready: " + (root / "server.log").read_text()[-2000:])
        every = cases(ports)
        for round in range(ROUNDS):
            print(f"-- round {round + 1} of {ROUNDS}", flush=True)
            for name in selected or list(every):
                measure(name, every[name], ports["http"])
        for line in subprocess.run(["ps", "-o", "pid,rss,args", "--ppid", str(server.pid)], capture_output=True,
                                   text=True).stdout.splitlines():
            print("server's worker processes:", line[:100])
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main(sys.argv[1:])
