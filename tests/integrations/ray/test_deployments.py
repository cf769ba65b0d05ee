"""triserve on a local 3-node Ray cluster (1 CPU each, everything on 127.0.0.1): the same bytes
as the single-process server through Serve's HTTP proxy, tritonclient unchanged, and one model
replica killed under 8 clients: no failed request with the ingress's retry, at least one without.

Figures (failures per kill, time to restore the replica, per-request latency through Serve and
through `triserve serve`) are printed: run with -s to see them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time

import httpx
import numpy as np
import pytest

slow = pytest.mark.slow  # the cluster tests; the settings tests below need no cluster

# Loopback only: no token auth (Ray 2.60 turns it on), no usage reports, and every address Ray
# resolves for "this node" is 127.0.0.1 (it would pick the machine's interface address).
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
# Serve gives its proxy 5 s to report ready and 10 s per health check, three strikes, then kills
# it: on a busy 2-core machine a healthy proxy misses that. Generous bounds only fail a hung one.
os.environ.update(RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S="60", RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S="60")
# A request for a multiplexed model waits up to 1-2 s (by default) for a replica holding its model
# before Serve sends it to another one (which then loads it, evicting its least recently used
# model); 50 ms makes that happen under the multiplexing test's load, so evictions are exercised.
os.environ.update(RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S="0.05")
# Ray starts its workers (every Serve replica, the proxy, the controller) at niceness 15: beside
# other busy processes at 0 they get a few percent of a core, and kills, restarts and health
# checks overrun every bound. The test cluster competes on equal terms instead.
os.environ.update(RAY_worker_niceness="0")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.inprocess import SIMPLE_CONFIG, tiny_repository  # noqa: E402
from triserve.integrations.ray import app  # noqa: E402
from triserve.integrations.ray.deployments import GRPC_SERVICERS, Settings, settings_from_args  # noqa: E402
from triserve.options import FRONTENDS, ServerOptions  # noqa: E402
from triserve.server import Server  # noqa: E402

NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "include_dashboard": False}
APP = "triserve"
REPLICAS = 3
MODELS = "TriserveModels"
BOUND = 180  # seconds: bounds a hang only, never a measurement
GRPC_PORT = free_port()
WORKER = {k: v for k, v in NODE.items() if k != "include_dashboard"}
CLUSTER: list = []  # the module's cluster (the node test removes a worker and adds one back)


# `held`: Triton's simple model whose dynamic batcher holds each request up to 1 s for a batch of 8
# that never fills (each replica takes one request at a time), so requests are in flight on the
# replicas when one is killed (with 150 ms, on a busy machine, requests spent most of their time
# in Serve's proxy and ingress and a kill could miss them three times in a row).
HELD_CONFIG = (SIMPLE_CONFIG.replace('name: "simple"', 'name: "held"')
               + "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 1000000 }\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tiny_repository(tmp_path_factory.mktemp("ray") / "repo")
    (root / "held" / "1").mkdir(parents=True)
    (root / "held" / "1" / "model.onnx").write_bytes((root / "simple" / "1" / "model.onnx").read_bytes())
    (root / "held" / "config.pbtxt").write_text(HELD_CONFIG)
    return root


@pytest.fixture(scope="module")
def cluster(repo):
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    for _ in range(2):
        cluster.add_node(**WORKER)
    CLUSTER.append(cluster)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="warning")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly",
                    grpc_options={"port": GRPC_PORT, "grpc_servicer_functions": GRPC_SERVICERS})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def deploy(repo, url: str, retries: int) -> None:
    """3 model replicas, one per node, each taking one request at a time: under 8 clients every
    replica holds a request, so a kill always hits one in flight."""
    serve.run(app({"model_repository": str(repo), "replicas": REPLICAS, "max_replicas_per_node": 1,
                   "max_ongoing_requests": 1, "retries": retries, "serve_args": "--batch-calibration off"}),
              name=APP, route_prefix="/")
    wait_until(lambda: httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200)


def wait_until(condition, bound: float = BOUND) -> float:
    """Poll `condition` until true; the seconds it took (a bound on a hang, not an assertion)."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        assert time.monotonic() - started < bound, "condition not met"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(cluster, repo):
    deploy(repo, cluster, retries=3)
    return cluster


V2 = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                 {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
BINARY_IN = np.arange(16, dtype=np.int32).tobytes() + np.ones(16, dtype=np.int32).tobytes()
BINARY_HEADER = (b'{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}},'
                 b'{"name":"INPUT1","shape":[1,16],"datatype":"INT32","parameters":{"binary_data_size":64}}],'
                 b'"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}},{"name":"OUTPUT1"}]}')
CALLS = [
    ("POST", "/v2/models/simple/infer", {"json": V2}),
    ("POST", "/v2/models/simple/versions/1/infer", {"json": {**V2, "id": "seven"}}),
    ("POST", "/v2/models/simple/infer", {"content": BINARY_HEADER + BINARY_IN,
                                          "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}}),
    ("POST", "/v2/models/scores/infer", {"json": {"inputs": [{"name": "INPUT", "shape": [1, 5], "datatype": "FP32",
                                                              "data": [0.1, 0.5, 0.2, 0.9, 0.3]}],
                                                  "outputs": [{"name": "OUTPUT", "parameters": {"classification": 2}}]}}),
    ("GET", "/v2/models/simple", {}),
    ("GET", "/v2/models/simple/config", {}),
    ("GET", "/v2/health/ready", {}),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v1/models/doubler:predict", {"json": {"instances": [[1.0, 2.0, 3.0]]}}),
    ("POST", "/predictions/doubler", {"json": {"x": [1.0, 2.0, 3.0]}}),
    ("POST", "/v2/models/nope/infer", {"json": V2}),
    ("POST", "/v2/models/simple/infer", {"json": {"inputs": [{**V2["inputs"][0], "datatype": "FP32"}, V2["inputs"][1]]}}),
    ("POST", "/v2/models/simple/infer", {"content": b"{not json"}),
]


def _single_process(repo, work, grpc_port: int = 0):
    """Run `work(url)` against `triserve serve --single-port` (same routes on one port; every gRPC
    service on `grpc_port` if given) in this process."""
    port = free_port()
    server = Server(ServerOptions(model_repositories=(repo,), ports={**{n: 0 for n in FRONTENDS}, "grpc": grpc_port},
                                  single_port=port, batch_calibration="off"))
    result: dict = {}
    url = f"http://127.0.0.1:{port}"

    async def main():
        running = asyncio.create_task(server.run())
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                while True:
                    assert not running.done()
                    try:
                        if (await client.get("/v2/health/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            result["value"] = await asyncio.to_thread(work, url)
        finally:
            server.stop()
            await running

    asyncio.run(main())
    return result["value"]


def _calls(url: str) -> list[tuple[int, bytes]]:
    with httpx.Client(base_url=url, timeout=60) as client:
        return [((r := client.request(m, p, **kw)).status_code, r.content) for m, p, kw in CALLS]


def test_app_arguments_become_deployment_options():
    settings = settings_from_args({"model_repository": "/models", "autoscale": "1:4", "num_gpus": "0.5",
                                   "target_ongoing_requests": "8", "serve_args": "--strict-readiness false"})
    assert settings.serve_args == ("--model-repository", "/models", "--strict-readiness", "false")
    options = settings.model_options()
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0}
    assert "num_replicas" not in options and options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert Settings(serve_args=("--model-repository", "/m"), replicas=3).model_options()["num_replicas"] == 3


@pytest.mark.parametrize("args, message", [
    ({}, "a model repository is required"),
    ({"model_repository": "/m", "autoscaling_config": "{bad"}, "autoscaling_config must be a JSON object"),
    ({"model_repository": "/m", "replica": "2"}, "unknown argument(s) replica"),
    ({"model_repository": "/m", "autoscale": "4:1"}, "MIN:MAX"),
    ({"model_repository": "/m", "autoscale": "two"}, "MIN:MAX"),
])
def test_bad_app_arguments_are_refused_with_the_reason(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_args(args)


@pytest.mark.anyio
async def test_a_replicas_health_check_fails_once_a_model_it_served_is_gone(tmp_path):
    from tests.inprocess import triton_dataplane
    from triserve.integrations.ray.deployments import Models

    async with triton_dataplane(tiny_repository(tmp_path), control_mode="explicit",
                                load_models=["simple", "scores"]) as dataplane:
        replica = Models.func_or_class.__new__(Models.func_or_class)  # its __init__ builds from flags
        replica.dataplane = dataplane
        replica.started = [n for n in dataplane.names() if dataplane.versions(n)]
        replica.check_health()  # every model it started with is ready
        await dataplane.unload("scores")
        with pytest.raises(RuntimeError, match="no longer ready on this replica: scores"):
            replica.check_health()


@slow
def test_model_replicas_run_on_three_nodes(served):
    from ray._private import state

    alive = [a for a in state.actors().values() if a["State"] == "ALIVE" and a["Name"] in _replicas()]
    assert len(alive) == REPLICAS
    assert len({a["Address"]["NodeID"] for a in alive}) == REPLICAS == len(ray.nodes())


@slow
def test_answers_through_serve_are_byte_identical_to_the_single_process_server(served, repo):
    expected = _single_process(repo, _calls)
    through_serve = _calls(served)
    assert [s for s, _ in expected][:4] == [200, 200, 200, 200] and expected[10][0] == 404 and expected[11][0] == 400
    for call, want, got in zip(CALLS, expected, through_serve):
        assert got == want, call[:2]


@slow
def test_tritonclient_http_works_unchanged_against_serve(served):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple")
    assert client.get_model_metadata("simple")["inputs"][0]["name"] == "INPUT0"
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
                                                     httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)])
    assert (result.as_numpy("OUTPUT0") == a + b).all() and (result.as_numpy("OUTPUT1") == a - b).all()
    with pytest.raises(Exception, match="unknown model"):
        client.infer("nope", inputs)


def _grpc_calls(address: str) -> list:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.full((1, 16), 2, dtype=np.int32))
    answers: list = [client.is_server_live(), client.is_server_ready(), client.is_model_ready("simple"),
                     client.is_model_ready("nope"),
                     client.get_model_metadata("simple").SerializeToString(),
                     client.get_model_config("doubler").SerializeToString(),
                     client.infer("simple", inputs, request_id="r1").get_response().SerializeToString()]
    streamed: list = []
    client.start_stream(callback=lambda result, error: streamed.append(
        result.get_response().SerializeToString() if error is None else str(error)))
    for i in range(3):
        client.async_stream_infer("simple", inputs, request_id=f"s{i}")
    client.stop_stream()  # waits for the answers
    answers.append(sorted(streamed))  # each answer is written as soon as it is ready: any order
    for call in (lambda: client.infer("nope", inputs), lambda: client.infer("simple", inputs[:1]),
                 lambda: client.load_model("simple")):
        try:
            call()
            answers.append("no error")
        except InferenceServerException as e:
            answers.append((e.status(), e.message()))
    client.close()
    return answers


@slow
def test_v2_grpc_through_serve_answers_what_the_single_process_server_answers(served, repo):
    """tritonclient.grpc unchanged against Serve's gRPC proxy, ModelStreamInfer included; the same
    bytes and errors as the single-process server's gRPC port, except the repository API (Serve
    manages the models)."""
    port = free_port()
    expected = _single_process(repo, lambda url: _grpc_calls(f"127.0.0.1:{port}"), grpc_port=port)
    through_serve = _grpc_calls(f"127.0.0.1:{GRPC_PORT}")
    assert expected[:4] == [True, True, True, False] and expected[-1] != "no error"
    from tritonclient.grpc import service_pb2

    assert sorted(service_pb2.ModelInferResponse.FromString(a).id for a in expected[7]) == ["s0", "s1", "s2"]
    assert through_serve[:-1] == expected[:-1]
    assert through_serve[-1][0] == "StatusCode.UNAVAILABLE" and "managed by Ray Serve" in through_serve[-1][1]


def _replicas() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and f"#{MODELS}#" in a["name"])


def _victim() -> str:
    """The model replica on the ingress's node: Serve routes to replicas on the caller's node first,
    so it is the one with requests in flight."""
    from ray._private import state

    alive = [a for a in state.actors().values() if a["State"] == "ALIVE" and a["Name"]]
    ingress_nodes = {a["Address"]["NodeID"] for a in alive if "#TriserveIngress#" in a["Name"]}
    local = sorted(a["Name"] for a in alive if f"#{MODELS}#" in a["Name"] and a["Address"]["NodeID"] in ingress_nodes)
    return (local or _replicas())[0]


def _running() -> int:
    return serve.status().applications[APP].deployments[MODELS].replica_states.get("RUNNING", 0)


def kill_under_load(url: str, affected, kills: int = 3) -> dict:
    """8 clients infer in a loop (model `held`; more clients than replicas, so a replica gets its
    next request as soon as it is free, also on a busy machine); one model replica is killed, and
    killed again (up to `kills` times, each once the replica count is back) until
    `affected(counts)` says a kill hit a request in flight; every answer is checked."""
    lock, stop = threading.Lock(), threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    expected = [i + 1 for i in range(16)]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v2/models/held/infer", json=V2)
                    good = r.status_code == 200 and r.json()["outputs"][0]["data"] == expected
                    text = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    good, text = False, type(e).__name__
                with lock:
                    counts["ok" if good else "failed"] += 1
                    if not good:
                        failures.append(text)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    restore: list[float] = []
    per_kill: list[int] = []
    try:
        wait_until(lambda: counts["ok"] >= 40)
        for _ in range(kills):
            before = _replicas()
            failed_before = counts["failed"]
            assert len(before) == REPLICAS
            killed_at = time.monotonic()
            victim = _victim()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            ok_at_kill = counts["ok"]
            wait_until(lambda: victim not in _replicas() and len(_replicas()) == REPLICAS and _running() == REPLICAS)
            restore.append(time.monotonic() - killed_at)
            wait_until(lambda: counts["ok"] >= ok_at_kill + 20)  # served after the kill too
            per_kill.append(counts["failed"] - failed_before)
            if affected(counts):
                break
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    return {"ok": counts["ok"], "failed": counts["failed"], "failures": failures, "per_kill": per_kill,
            "restore_s": restore}


@slow
def test_a_replica_killed_under_load_fails_no_request_and_is_replaced(served):
    ingress = serve.get_deployment_handle("TriserveIngress", app_name=APP)
    retried_before = ingress.retried.remote().result()
    figures = kill_under_load(served, lambda counts: ingress.retried.remote().result() > retried_before)
    retried = ingress.retried.remote().result() - retried_before
    print(f"\nray kill, retry on: {figures['ok']} ok, failures per kill {figures['per_kill']},"
          f" {retried} retried, replica restored in {[round(s, 1) for s in figures['restore_s']]} s")
    assert figures["failures"] == []
    assert retried >= 1  # a kill did hit requests in flight: the retry is what saved them
    assert _running() == REPLICAS


@slow
def test_without_retry_the_same_kill_fails_requests(served, repo):
    """The negative control: the same kill with the ingress's retry off fails requests in flight
    (so the test above can fail). Up to 3 kills, for the rare kill with nothing in flight."""
    deploy(repo, served, retries=0)
    try:
        figures = kill_under_load(served, lambda counts: counts["failed"] > 0)
        print(f"\nray kill, retry off: {figures['ok']} ok, failures per kill {figures['per_kill']},"
              f" restored in {[round(s, 1) for s in figures['restore_s']]} s; e.g. {figures['failures'][:1]}")
        assert figures["failed"] >= 1
        assert all(f.startswith("503 ") for f in figures["failures"])  # the protocol's own error, never a 500
    finally:
        deploy(repo, served, retries=3)


def _latency(url: str, n: int = 200) -> float:
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(10):
            client.post("/v2/models/simple/infer", json=V2)
        took = []
        for _ in range(n):
            started = time.perf_counter()
            assert client.post("/v2/models/simple/infer", json=V2).status_code == 200
            took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


@slow
def test_model_replicas_scale_up_under_load_and_back_down_after(served, repo):
    serve.run(app({"model_repository": str(repo), "autoscale": "1:3", "max_replicas_per_node": 1,
                   "target_ongoing_requests": 1, "max_ongoing_requests": 4, "serve_args": "--batch-calibration off",
                   "autoscaling_config": {"upscale_delay_s": 1, "downscale_delay_s": 3, "metrics_interval_s": 0.5,
                                          "look_back_period_s": 2}}), name=APP, route_prefix="/")
    try:
        wait_until(lambda: httpx.get(f"{served}/v2/health/ready", timeout=30).status_code == 200 and _running() == 1)
        stop = threading.Event()
        answers: list[int] = []

        def client() -> None:
            with httpx.Client(base_url=served, timeout=120) as http:
                while not stop.is_set():
                    answers.append(http.post("/v2/models/held/infer", json=V2).status_code)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            up = wait_until(lambda: _running() >= 2)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        down = wait_until(lambda: _running() == 1 and len(_replicas()) == 1)
        print(f"\nautoscaling 1:3 under 6 clients: >= 2 replicas after {up:.1f} s of load,"
              f" back to 1 {down:.1f} s after it stopped; {len(answers)} answers")
        assert set(answers) == {200}
    finally:
        deploy(repo, served, retries=3)


@slow
def test_overhead_of_serve_per_request_is_measured(served, repo):
    """No target (2 shared cores): the figures go in the note."""
    direct = _single_process(repo, _latency)
    through_serve = _latency(served)
    print(f"\nsequential v2 infer, median: triserve serve {direct:.2f} ms, through Ray Serve {through_serve:.2f} ms,"
          f" overhead {through_serve - direct:.2f} ms per request")
    assert direct > 0 and through_serve > 0


@slow
def test_triserve_ray_deploys_the_application_on_a_running_cluster(served, repo):
    """`triserve ray --address ADDR ... --detach` as a user runs it (a separate process)."""
    import subprocess
    import sys

    serve.delete(APP)
    try:
        command = [sys.executable, "-m", "triserve", "ray", "--address", ray.get_runtime_context().gcs_address,
                   "--model-repository", str(repo), "--replicas", "2", "--name", APP, "--host", "127.0.0.1",
                   "--http-port", served.rsplit(":", 1)[1], "--serve-args", "--batch-calibration off", "--detach"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BOUND, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"application '{APP}' running" in done.stdout
        wait_until(lambda: httpx.get(f"{served}/v2/health/ready", timeout=30).status_code == 200)
        answer = httpx.post(f"{served}/v2/models/simple/infer", json=V2, timeout=60)
        assert answer.status_code == 200 and answer.json()["outputs"][1]["data"] == [i - 1 for i in range(16)]
        assert _running() == 2
    finally:
        deploy(repo, served, retries=3)



@slow
def test_a_worker_node_removed_under_load_fails_no_request(served, repo):
    """A worker node dies (not gracefully) under 8 clients. The ingress stays beside the HeadOnly
    proxy (pinned to the head), and model replicas take one request at a time with more waiting
    (8 clients, 3 replicas: a replica gets the next request as soon as it is free, also on a busy
    machine), so requests are in flight on every node; those on the dead node are sent again to
    the others."""
    cluster = CLUSTER[0]
    serve.run(app({"model_repository": str(repo), "replicas": REPLICAS, "max_replicas_per_node": 1, "retries": 3,
                   "max_ongoing_requests": 1, "serve_args": "--batch-calibration off",
                   "ingress_resources": {"node:__internal_head__": 0.001}}), name=APP, route_prefix="/")
    wait_until(lambda: httpx.get(f"{served}/v2/health/ready", timeout=30).status_code == 200 and _running() == REPLICAS)
    ingress = serve.get_deployment_handle("TriserveIngress", app_name=APP)
    retried_before = ingress.retried.remote().result()
    lock, stop = threading.Lock(), threading.Event()
    counts = {"ok": 0}
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=served, timeout=120) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v2/models/held/infer", json=V2)
                except httpx.HTTPError as e:  # no answer at all is a failure too
                    with lock:
                        failures.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: counts["ok"] >= 20)
        worker = sorted(cluster.worker_nodes, key=lambda n: n.unique_id)[0]
        cluster.remove_node(worker, allow_graceful=False)
        ok_at_removal = counts["ok"]
        # the request that was on the dead node sent again (Ray may take a while to declare the
        # node's actors dead), and served on after that (each request is held 1 s)
        wait_until(lambda: ingress.retried.remote().result() > retried_before)
        ok_at_retry = counts["ok"]
        wait_until(lambda: counts["ok"] >= max(ok_at_retry, ok_at_removal) + 12)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        cluster.add_node(**WORKER)  # back to 3 nodes for whatever runs next
    retried = ingress.retried.remote().result() - retried_before
    print(f"\nworker node removed under 8 clients: {counts['ok']} ok, {len(failures)} failed, {retried} retried")
    assert failures == []
    assert retried >= 1  # the removal did hit requests in flight


MULTIPLEXED = "TriserveMultiplexed"


def _multiplexed_call(name: str, i: int) -> tuple[str, dict, object]:
    """A request for model `name` whose inputs depend on `i`, and the answer it must get."""
    if name == "simple":
        a, b = [(i + k) % 97 for k in range(16)], [i % 5] * 16
        request = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
                              {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b}]}
        return "/v2/models/simple/infer", request, [[x + y for x, y in zip(a, b)], [x - y for x, y in zip(a, b)]]
    if name == "scores":
        data = [float((i + k) % 7) for k in range(5)]
        return ("/v2/models/scores/infer",
                {"inputs": [{"name": "INPUT", "shape": [1, 5], "datatype": "FP32", "data": data}]}, [data])
    x = [float(i % 11), 1.5, -2.0]
    return "/v2/models/doubler/infer", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x}]}, [
        [2 * v for v in x]]


def _multiplex_counts(bound: int = 200) -> dict[str, dict]:
    """Each multiplexed replica's counts (loads, evictions, resident models), by replica id."""
    handle = serve.get_deployment_handle(MULTIPLEXED, app_name=APP)
    found: dict[str, dict] = {}
    for _ in range(bound):
        counts = handle.counts.remote().result()
        found[counts["replica"]] = counts
        if len(found) == 2:
            return found
    raise AssertionError(f"only {len(found)} multiplexed replica(s) answered")


@slow
def test_three_models_multiplexed_on_two_replicas_of_two_models_each(served, repo, tmp_path):
    """@serve.multiplexed: 3 models, 2 replicas holding at most 2 models each (model id = model
    name, least recently used evicted). 6 clients ask for all 3 models: every answer is right,
    no replica ever holds more than 2 models, and models are evicted and loaded again."""
    models = tiny_repository(tmp_path / "multiplexed")  # simple, scores, doubler
    serve.run(app({"model_repository": str(models), "replicas": 2, "multiplex": 2, "max_replicas_per_node": 1,
                   "max_ongoing_requests": 1, "serve_args": "--batch-calibration off"}), name=APP, route_prefix="/")
    try:
        wait_until(lambda: httpx.get(f"{served}/v2/health/ready", timeout=30).status_code == 200)
        index = httpx.post(f"{served}/v2/repository/index", timeout=30).json()
        assert sorted((r["name"], r["state"]) for r in index) == [("doubler", "READY"), ("scores", "READY"),
                                                                  ("simple", "READY")]
        lock, stop = threading.Lock(), threading.Event()
        answers = {"ok": 0}
        wrong: list[str] = []

        def client(c: int) -> None:
            order = ["simple", "scores", "doubler"][c % 3:] + ["simple", "scores", "doubler"][:c % 3]
            i = c * 1000
            with httpx.Client(base_url=served, timeout=120) as http:
                while not stop.is_set():
                    for name in order:
                        i += 1
                        path, body, want = _multiplexed_call(name, i)
                        r = http.post(path, json=body)
                        good = r.status_code == 200 and [o["data"] for o in r.json()["outputs"]] == want
                        with lock:
                            if good:
                                answers["ok"] += 1
                            else:
                                wrong.append(f"{name} {r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(6)]
        for t in threads:
            t.start()
        seen: list[dict] = []
        try:
            def evicted() -> bool:
                counts = _multiplex_counts()
                seen.append(counts)
                assert all(len(c["resident"]) <= 2 for c in counts.values()), counts
                return answers["ok"] >= 60 and sum(c["evictions"] for c in counts.values()) >= 1
            try:
                wait_until(evicted)
            except AssertionError:
                raise AssertionError(f"no eviction seen: {answers['ok']} right, wrong {wrong[:3]}, last {seen[-1:]}")
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        final = _multiplex_counts()
        loads = sum(c["loads"] for c in final.values())
        evictions = sum(c["evictions"] for c in final.values())
        print(f"\nmultiplexing 3 models on 2 replicas (2 each) under 6 clients: {answers['ok']} right answers,"
              f" {len(wrong)} wrong; loads {loads}, evictions {evictions};"
              f" per replica {[(c['loads'], c['evictions'], c['resident']) for c in final.values()]}")
        assert wrong == []
        assert evictions >= 1 and loads >= 3
        assert all(len(c["resident"]) <= 2 and c["loads"] - c["evictions"] == len(c["resident"]) for c in final.values())
    finally:
        deploy(repo, served, retries=3)


def _tfserving_and_torchserve_grpc_calls(tfserving: str, torchserve: str) -> list:
    """TF Serving's stock stubs (tensorflow-serving-api) and TorchServe's method paths: answers as
    bytes, errors as (code, details)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import tensorflow as tf
    from google.protobuf import empty_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    from triserve.protos import torchserve_inference_pb2 as ts

    answers: list = []

    def call(fn) -> None:
        try:
            answers.append(fn().SerializeToString(deterministic=True))
        except grpc.RpcError as e:
            answers.append((str(e.code()), e.details()))

    with grpc.insecure_channel(tfserving) as channel:
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "doubler"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=tf.float32))
        call(lambda: predictions.Predict(request, timeout=60))
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "simple"

        def signatures():  # the SignatureDefMap packed in the answer (an Any: its map order is the server's)
            answer = predictions.GetModelMetadata(metadata, timeout=60)
            unpacked = get_model_metadata_pb2.SignatureDefMap()
            assert answer.metadata["signature_def"].Unpack(unpacked)
            del answer.metadata["signature_def"]
            answer.metadata["signature_def"].Pack(unpacked, deterministic=True)
            return answer

        call(signatures)
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "doubler"
        call(lambda: models.GetModelStatus(status, timeout=60))
        unknown = predict_pb2.PredictRequest()
        unknown.CopyFrom(request)
        unknown.model_spec.name = "nope"
        call(lambda: predictions.Predict(unknown, timeout=60))
        wrong = predict_pb2.PredictRequest()
        wrong.CopyFrom(request)
        wrong.inputs["x"].CopyFrom(tf.make_tensor_proto([[1, 2, 3]], dtype=tf.int64))
        call(lambda: predictions.Predict(wrong, timeout=60))
        call(lambda: channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(b"\xff\xff", timeout=60))
    with grpc.insecure_channel(torchserve) as channel:
        service = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"

        def unary(method, request, response):
            return channel.unary_unary(service + method, request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=response.FromString)(request, timeout=60)

        row = ts.PredictionsRequest(model_name="doubler", input={"body": b'{"x": [1.0, 2.0, 3.0]}'})
        call(lambda: unary("Ping", empty_pb2.Empty(), ts.TorchServeHealthResponse))
        call(lambda: unary("Predictions", row, ts.PredictionResponse))
        streamed = channel.unary_stream(service + "StreamPredictions", request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=ts.PredictionResponse.FromString)
        call(lambda: ts.PredictionResponse(prediction=b"".join(r.prediction for r in streamed(row, timeout=60))))
        call(lambda: unary("Predictions", ts.PredictionsRequest(model_name="nope", input=row.input), ts.PredictionResponse))
    return answers


@slow
def test_tfserving_and_torchserve_grpc_through_serve_answer_what_the_single_process_server_answers(served, repo):
    """TF Serving's PredictionService/ModelService and TorchServe's inference service through
    Serve's gRPC proxy (the same port as v2 gRPC): the same bytes and errors as `triserve serve`'s
    own TF Serving and TorchServe gRPC ports."""
    port = free_port()  # --single-port: every gRPC service on the one gRPC port, as through Serve
    expected = _single_process(repo, lambda url: _tfserving_and_torchserve_grpc_calls(
        f"127.0.0.1:{port}", f"127.0.0.1:{port}"), grpc_port=port)
    print(f"\nTF Serving / TorchServe gRPC, triserve serve: {[a if isinstance(a, tuple) else len(a) for a in expected]}")
    through_serve = _tfserving_and_torchserve_grpc_calls(f"127.0.0.1:{GRPC_PORT}", f"127.0.0.1:{GRPC_PORT}")
    print(f"\nTF Serving / TorchServe gRPC through Serve: {[a if isinstance(a, tuple) else len(a) for a in through_serve]}")
    assert [isinstance(a, bytes) for a in expected] == [True, True, True, False, False, False, True, True, True, False]
    import json

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from triserve.protos import torchserve_inference_pb2 as ts

    predicted = predict_pb2.PredictResponse.FromString(expected[0]).outputs["y"]
    assert tf.make_ndarray(predicted).tolist() == [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]
    assert [json.loads(ts.PredictionResponse.FromString(a).prediction) for a in expected[7:9]] == [{"y": [2.0, 4.0, 6.0]}] * 2
    assert through_serve == expected
