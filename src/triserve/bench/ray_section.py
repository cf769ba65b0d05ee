"""The `ray` section: the ONNX model over binary v2 HTTP through Ray Serve (the triserve Serve
application: Serve's proxy -> the ingress deployment -> one model replica) beside `triserve serve`
over the same repository, in the same run, sequential (concurrency 1) and concurrent.

Both run side by side and are measured in turn, 3 rounds of --seconds each (sections.interleaved,
the order rotated each round; rows are medians). Ray runs a
local single-node instance that this section starts and stops itself, on 127.0.0.1
only (token authentication off, as on any loopback test), with Serve's proxy on a free port; a
Ray cluster this machine may already run is never joined or touched. The figures: the added time
per request through Serve (p50 at concurrency 1, Serve minus `triserve serve`) and the throughput
ratio at each concurrency. No aim: on small CPUs Serve's Python proxy is the known limit.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

import numpy as np

from triserve.bench.load import HOST, HTTPSender, served
from triserve.bench.models import v2_binary_request
from triserve.bench.results import Result, Table, median_of, median_ratio
from triserve.bench.sections import ROUNDS, interleaved
from triserve.bench.servers import link_repository

RAY_CONCURRENCIES = (1, 8)
READY_SECONDS = 600  # the replica loads and warms the model; bounds a hang only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_ready(port: int, model: str) -> None:
    import httpx

    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}/v2/models/{model}/ready", timeout=30).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Ray Serve application did not get ready in {READY_SECONDS} s")


class _LocalServe:
    """A local Ray instance with the triserve Serve application on `repo` (context manager
    giving the HTTP port)."""

    def __init__(self, repo: Any, cores: int) -> None:
        self.repo, self.cores = repo, cores

    def __enter__(self) -> int:
        # Ray's workers run at niceness 15 by default: beside `triserve serve` (at 0) on the same cores
        # the comparison would measure the scheduler, not Serve.
        for name, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_worker_niceness", "0")):
            os.environ.setdefault(name, value)
        import ray
        from ray import serve

        from triserve.integrations.ray import app

        # address="local": a new instance of our own, never a cluster file left on the machine
        ray.init(address="local", _node_ip_address=HOST, include_dashboard=False, num_cpus=max(self.cores, 1),
                 logging_level="error", log_to_driver=False)
        try:
            port = _free_port()
            serve.start(http_options={"host": HOST, "port": port}, proxy_location="HeadOnly")
            serve.run(app({"model_repository": str(self.repo), "replicas": 1, "num_cpus": 1}), name="bench",
                      route_prefix="/")
        except BaseException:
            self.__exit__()
            raise
        return port

    def __exit__(self, *exc: Any) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def ray_table(model: str, direct: dict[int, list[Result]], through: dict[int, list[Result]]) -> Table:
    """The section's table from each concurrency's rounds: `triserve serve` and through Serve."""
    table = Table(f"ray: {model} over binary v2 HTTP, through Ray Serve (proxy, ingress, one model replica) vs"
                  " `triserve serve`; the last column is the ratio to `triserve serve`")
    ratios = {c: median_ratio(through[c], direct[c]) for c in direct}
    for c in direct:
        table.rows += [(median_of(direct[c]), median_of(direct[c])), (median_of(through[c]), median_of(direct[c]))]
        table.notes.append(f"concurrency {c}: Ray Serve gives {ratios[c]:.2f} x the requests/s of triserve serve,"
                           f" p50 {median_of(through[c]).p50_ms:.2f} vs {median_of(direct[c]).p50_ms:.2f} ms")
    rounds = len(next(iter(direct.values())))
    table.notes.append(f"Each row is the median of {rounds} rounds of --seconds, the two servers measured in turn in a"
                       " rotating order; the ratios are medians of each round's ratio.")
    first = min(direct)
    added = float(np.median([t.p50_ms - d.p50_ms for t, d in zip(through[first], direct[first], strict=True)]))
    table.summary.append(
        f"ray: added per request through Serve (p50 at concurrency {first}, median over rounds): {added:+.2f} ms;"
        " throughput ratio " + ", ".join(f"{ratios[c]:.2f} at concurrency {c}" for c in direct))
    return table


def ray_section(b: Any) -> Table:
    """`b` is the run's sections.Bench. Both servers run side by side and are measured in turn
    (sections.interleaved), so that load from elsewhere on a shared machine falls on both alike."""
    model = b.model(b.onnx_model)
    repo = link_repository(b.tmp / "ray", b.repo, [model.name])
    direct: dict[int, list[Result]] = {}
    through: dict[int, list[Result]] = {}
    with b.repository_server("ray-direct", [model.name], ("http",)) as server, _LocalServe(repo, b.cores) as port:
        _wait_ready(port, model.name)
        senders = {"triserve serve": HTTPSender(server.ports["http"], v2_binary_request(model, server.ports["http"])),
                   "through Ray Serve": HTTPSender(port, v2_binary_request(model, port))}
        for c in RAY_CONCURRENCIES:
            rounds = interleaved({label: functools.partial(served, f"{label}, concurrency {c}", sender, c)
                                  for label, sender in senders.items()}, b.seconds * ROUNDS)
            direct[c], through[c] = rounds["triserve serve"], rounds["through Ray Serve"]
    return ray_table(model.name, direct, through)
