"""`triserve ray`: deploy triserve's Serve application on a Ray cluster and keep it running.

    triserve ray --address ADDR --model-repository DIR [--replicas N | --autoscale MIN:MAX]
                 [--http-port 8000] [--grpc-port 8001]

It connects to the cluster (the address is always explicit: `ray.init()` without one can pick up
a stale cluster file), starts Serve's HTTP and gRPC proxies on --host/--http-port/--grpc-port, runs the application and
waits; Ctrl-C or SIGTERM deletes the application (the cluster keeps running), unless --detach
returned at once after the deploy.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import threading

log = logging.getLogger("triserve")


def add_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--address", required=True,
                   help="the Ray cluster to deploy on: host:port of its GCS (ray start --head prints it), or"
                        " 'auto' for the cluster this machine joined (required)")
    r.add_argument("--model-repository", action="append", default=[], metavar="DIR",
                   help="model folder every model replica serves, as for `triserve serve` (repeatable; at least"
                        " one, unless --serve-args names the model sources); every node must see it at this path")
    scale = r.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    scale.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                       help="autoscale the model replicas between MIN and MAX on ongoing requests"
                            " (default off: --replicas)")
    r.add_argument("--target-ongoing-requests", type=float, default=2.0,
                   help="with --autoscale: ongoing requests per replica Serve scales to (default 2; about the"
                        " model's max_batch_size lets batches form)")
    r.add_argument("--max-ongoing-requests", type=int, default=16,
                   help="requests one model replica takes at a time; more wait in Serve's queue (default 16)")
    r.add_argument("--num-cpus", default="1",
                   help="CPUs each model replica reserves, fractions allowed, or 'auto': 0.5 per CPU instance of"
                        " the instance_group of each model the replica holds (default 1)")
    r.add_argument("--multiplex", type=int, default=0, metavar="N",
                   help="each model replica holds at most N models, loaded on their first request, the least"
                        " recently used evicted (Serve's multiplexing; default 0: every replica serves every model)")
    r.add_argument("--num-gpus", default="0",
                   help="GPUs each model replica reserves, fractions allowed (0.5: two replicas per GPU), or 'auto':"
                        " 0.5 of a GPU per KIND_GPU instance of the models the replica holds (default 0)")
    r.add_argument("--retries", type=int, default=3,
                   help="times the ingress sends inference again, to another replica, when the replica answering"
                        " dies (default 3; 0: never)")
    r.add_argument("--host", default="0.0.0.0", help="address Serve's HTTP proxies listen on (default 0.0.0.0)")
    r.add_argument("--http-port", type=int, default=8000,
                   help="port of Serve's HTTP proxies: v2, TF Serving REST and TorchServe inference routes"
                        " (default 8000)")
    r.add_argument("--grpc-port", type=int, default=8001,
                   help="port of Serve's gRPC proxies: KServe v2 inference.GRPCInferenceService (ModelStreamInfer"
                        " included), TF Serving's PredictionService and ModelService, TorchServe's inference"
                        " service (default 8001; 0: no gRPC)")
    r.add_argument("--proxy-location", default="EveryNode", choices=["EveryNode", "HeadOnly", "Disabled"],
                   help="where Serve runs HTTP proxies (default EveryNode)")
    r.add_argument("--name", default="triserve", help="the Serve application's name (default triserve)")
    r.add_argument("--serve-args", default="",
                   help="more `triserve serve` flags for every model replica, one quoted string"
                        " (default none), e.g. \"--strict-readiness false\"")
    r.add_argument("--detach", action="store_true",
                   help="return once the application is running instead of waiting (default off)")


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        import ray
        from ray import serve
    except ImportError:
        print("triserve ray: Ray Serve is not installed: pip install 'triserve[ray]'", file=sys.stderr)
        return 2
    from triserve.integrations.ray.deployments import build, settings_from_args

    values = {
        "model_repository": list(args.model_repository), "serve_args": args.serve_args,
        "replicas": args.replicas, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
        "max_ongoing_requests": args.max_ongoing_requests, "target_ongoing_requests": args.target_ongoing_requests,
        "retries": args.retries, "multiplex": args.multiplex,
    }
    if args.autoscale:
        values["autoscale"] = args.autoscale
    try:
        settings = settings_from_args(values)
        if args.replicas < 1 or args.retries < 0 or args.max_ongoing_requests < 1:
            raise ValueError("--replicas and --max-ongoing-requests must be at least 1, --retries at least 0")
    except ValueError as e:
        print(f"triserve ray: {e}", file=sys.stderr)
        return 2
    ray.init(address=args.address, logging_level="warning")
    from triserve.integrations.ray.deployments import GRPC_SERVICERS

    grpc_options = {"port": args.grpc_port, "grpc_servicer_functions": GRPC_SERVICERS} if args.grpc_port else None
    serve.start(http_options={"host": args.host, "port": args.http_port}, grpc_options=grpc_options,
                proxy_location=args.proxy_location)
    serve.run(build(settings), name=args.name, route_prefix="/")
    print(f"triserve ray: application '{args.name}' running on {args.host}:{args.http_port}"
          f" ({shlex.join(settings.serve_args)})", flush=True)
    if args.detach:
        return 0
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    serve.delete(args.name)
    return 0
