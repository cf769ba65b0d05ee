"""The `triserve` command: serve, classify, export-examples, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from triserve.server import FRONTENDS, ServerOptions, serve

    options = ServerOptions(
        model_repositories=[Path(p) for p in args.model_repository],
        host=args.host,
        ports={name: getattr(args, f"{name}_port") for name in FRONTENDS},
        model_control_mode=args.model_control_mode,
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        log_level=args.log_level,
        extra=vars(args),
    )
    return serve(options)


def _classify(args: argparse.Namespace) -> int:
    from triserve.client.classify import classify_main

    return classify_main(args)


def _export(args: argparse.Namespace) -> int:
    from triserve.examples.export import export_examples

    logging.basicConfig(level="INFO", format="%(message)s")
    repo = export_examples(Path(args.dir))
    print(f"example model repository written to {repo}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from triserve.bench import bench_main

    return bench_main(args)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve model repositories")
    s.add_argument("--model-repository", action="append", default=[], metavar="DIR",
                   help="a Triton model repository (repeatable; repositories merge)")
    s.add_argument("--host", default="127.0.0.1", help="address every front end binds (default 127.0.0.1)")
    from triserve.server import FRONTENDS

    for name, (port, _, title) in FRONTENDS.items():
        s.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=port, metavar="PORT",
                       help=f"{title} port (default {port}; 0 switches it off)")
    s.add_argument("--model-control-mode", default="none", choices=["none", "poll", "explicit"],
                   help="none: load everything at start; explicit: only what --load-model or the API asks")
    s.add_argument("--exit-on-error", type=_bool, default=False, metavar="BOOL",
                   help="exit if any model fails to load (default false: serve the others)")
    s.add_argument("--strict-readiness", type=_bool, default=True, metavar="BOOL",
                   help="/v2/health/ready only when every model is ready (default true)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_serve)

    c = sub.add_parser("classify", help="classify images with a served model, like Triton's image_client")
    c.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    c.add_argument("-m", "--model-name", required=True)
    c.add_argument("-x", "--model-version", default="")
    c.add_argument("-u", "--url", default=None, help="server URL (default localhost:8000, gRPC localhost:8001)")
    c.add_argument("-i", "--protocol", default="http", type=str.lower, choices=["http", "grpc"])
    c.add_argument("-c", "--classes", type=int, default=3, help="how many classes to print (default 3)")
    c.add_argument("-s", "--scaling", default="NONE", type=str.upper, choices=["NONE", "INCEPTION", "VGG"])
    c.add_argument("-b", "--batch-size", type=int, default=1)
    c.set_defaults(func=_classify)

    e = sub.add_parser("export-examples", help="write the example model repository")
    e.add_argument("dir", help="output folder; the repository is DIR/model_repository")
    e.set_defaults(func=_export)

    b = sub.add_parser("bench", help="served vs raw onnxruntime throughput and latency")
    b.add_argument("--model-repository", required=True)
    b.add_argument("-m", "--model-name", default="efficientnet_lite0_onnx")
    b.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    b.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies")
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
