"""The ingress's ASGI app: the routes of `triserve serve --single-port`, each served by its
protocol package (no protocol code is repeated here)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from triserve.options import DEFAULT_HTTP_MAX_INPUT_SIZE

METRICS_ELSEWHERE = (b'{"error":"through Ray Serve, metrics are Ray\'s: the Ray dashboard or its Prometheus'
                     b' endpoint (ray metrics), not the ingress"}')


async def _no_metrics(request: Request) -> Response:
    return Response(METRICS_ELSEWHERE, 404, media_type="application/json")


def ingress_app(dataplane: Any, options: Any = None) -> Any:
    """One ASGI app: /v2 KServe v2, /v1 TF Serving REST, anything else TorchServe inference, with
    the body limits of `options` (the replicas' `triserve serve` options; None: the defaults)."""
    from triserve.protocols.kserve.rest import V2HTTP
    from triserve.protocols.tfserving.rest import TFServingREST
    from triserve.protocols.torchserve.inference import TorchServeInference
    from triserve.shared_listener import single_port_router

    size = options.http.max_input_size if options is not None else DEFAULT_HTTP_MAX_INPUT_SIZE
    torchserve = TorchServeInference(dataplane, options.torchserve.max_request_size) if options is not None else (
        TorchServeInference(dataplane))
    apps = {
        "http": V2HTTP(dataplane, size).app(),
        "tfserving_rest": TFServingREST(dataplane, size).app(),
        "torchserve_inference": torchserve.app(),
        "metrics": Starlette(routes=[Route("/metrics", _no_metrics)]),
    }
    return single_port_router(apps)
