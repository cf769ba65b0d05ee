"""TorchServe APIs that share one address share one listener, as in TorchServe.

KServe's TorchServe config.properties puts the inference and management APIs on one address
(`inference_address=http://0.0.0.0:8085`, `management_address=http://0.0.0.0:8085`); TorchServe
then serves both on that port. triserve builds each API's front end as usual and serves their
apps behind one listener, routing by path: `/models...` and `/token` to the management API,
`/metrics` to the metrics API, everything else to the inference API.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

SHAREABLE = ("torchserve_inference", "torchserve_management", "torchserve_metrics")


def groups(options: Any) -> dict[str, list[str]]:
    """The first of each set of TorchServe HTTP APIs on one host:port -> the others on it."""
    by_address: dict[tuple[str, int], list[str]] = {}
    for name in SHAREABLE:
        port = options.ports.get(name, 0)
        if port:
            by_address.setdefault((options.host_of(name), port), []).append(name)
    return {names[0]: names[1:] for names in by_address.values() if len(names) > 1}


def _target(path: str, apps: dict[str, Any]) -> Any:
    if path == "/metrics" and "torchserve_metrics" in apps:
        return apps["torchserve_metrics"]
    if (path in ("/models", "/token") or path.startswith("/models/")) and "torchserve_management" in apps:
        return apps["torchserve_management"]
    return apps.get("torchserve_inference") or next(iter(apps.values()))


def router(apps: dict[str, Any]) -> Callable:
    """One ASGI app: each request to the API its path belongs to."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await _target(scope.get("path", ""), apps)(scope, receive, send)

    return app


def combine(options: Any, port: int, frontends: dict[str, Any]) -> Any:
    """One HTTP front end on `port` serving the apps of `frontends` (built, not started). Their apps
    keep their own access logs, token checks and counters."""
    from triserve.protocols.transport.http import HTTPFrontEnd

    first = next(iter(frontends))
    apps = {name: frontend.server.config.app for name, frontend in frontends.items()}
    return HTTPFrontEnd(router(apps), options.host_of(first), port, dataclasses.replace(options.http, access_log=False))


# -- --single-port: every HTTP API on one port, every gRPC service on one gRPC port ----------------
# KServe's Serverless mode (Knative) exposes one port per pod, and so does Ray Serve's ingress.
SINGLE_PORT_HTTP = ("http", "tfserving_rest", "torchserve_inference", "metrics")
SINGLE_PORT_GRPC = ("grpc", "tfserving_grpc", "torchserve_grpc_inference")
# Not on the single port: the TorchServe management APIs (they change what is served; they keep
# their own ports, 0 switches them off) and TorchServe's metrics API (/metrics is Triton's there).
SINGLE_PORT_APART = ("torchserve_management", "torchserve_grpc_management")


def single_port_target(path: str) -> str:
    """The API a path belongs to on the single port: /v2 KServe v2, /v1 TF Serving REST,
    /metrics Triton's metrics, anything else TorchServe's inference API (/ping, /predictions, ...)."""
    if path == "/v2" or path.startswith("/v2/"):
        return "http"
    if path in ("/console", "/docs", "/openapi.json") or path.startswith(("/console/", "/docs/", "/openapi/")):
        return "http"  # the web console and API docs (at /console here: / is TorchServe's)
    if path.startswith("/v1/"):
        return "tfserving_rest"
    if path == "/metrics":
        return "metrics"
    return "torchserve_inference"


def single_port_router(apps: dict[str, Any]) -> Callable:
    """One ASGI app routing each request to the app of single_port_target(path)."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await apps[single_port_target(scope.get("path", ""))](scope, receive, send)

    return app


def single_http(options: Any, frontends: dict[str, Any]) -> Any:
    """One HTTP front end on --single-port serving the apps of `frontends` (built, not started;
    each keeps its own access log, limits and counters)."""
    from triserve.protocols.transport.http import HTTPFrontEnd

    apps = {name: frontend.server.config.app for name, frontend in frontends.items()}
    return HTTPFrontEnd(single_port_router(apps), options.host, options.single_port,
                        dataclasses.replace(options.http, access_log=False))


def single_grpc(options: Any, port: int, frontends: dict[str, Any]) -> Any:
    """One gRPC front end on `port` with the services of `frontends` (built, not started)."""
    from triserve.protocols.transport.grpc import GRPCFrontEnd

    first = next(iter(frontends.values()))

    def register(server: Any) -> list[str]:
        return [service for frontend in frontends.values() for service in frontend.register(server)]

    return GRPCFrontEnd(register, options.host, port, ready=first.ready, max_message_bytes=first.max_message_bytes)
