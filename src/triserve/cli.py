"""The `triserve` command: serve, classify, export-examples, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from triserve.errors import ServerError
    from triserve.options import from_args
    from triserve.server import serve

    try:
        options = from_args(args)
    except ServerError as e:  # a --ts-config that cannot be read
        print(f"triserve: {e.message}", file=sys.stderr)
        return 1
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


def _archive(args: argparse.Namespace) -> int:
    from triserve.archiver import archive_main

    return archive_main(args)


def _bench(args: argparse.Namespace) -> int:
    from triserve.bench import bench_main

    return bench_main(args)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve model repositories")
    s.add_argument("--model-repository", action="append", default=[], metavar="DIR",
                   help="a Triton model repository (repeatable; repositories merge)")
    tf = s.add_argument_group("TF Serving models (SavedModels in numeric version folders)")
    tf.add_argument("--model-config-file", metavar="FILE",
                    help="a TF Serving models.conf (ModelServerConfig text format); relative base_paths resolve"
                         " against its folder")
    tf.add_argument("--model-base-path", metavar="DIR", help="serve one TF Serving model from DIR/<version>/")
    tf.add_argument("--model-name", metavar="NAME", help="the name of --model-base-path's model (default 'default')")
    tf.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0, metavar="SECONDS",
                    help="how often version folders are checked: new versions load, ones the policy drops"
                         " retire (default 1; 0: never)")
    tf.add_argument("--model-config-file-poll-wait-seconds", type=float, default=0.0, metavar="SECONDS",
                    help="how often --model-config-file is read again (default 0: only at start)")
    s.add_argument("--host", default="127.0.0.1", help="address every front end binds (default 127.0.0.1)")
    from triserve.options import DEFAULT_GRPC_MAX_BYTES_ELEMENTS
    from triserve.options import DEFAULT_GRPC_MAX_MESSAGE_BYTES, DEFAULT_JOB_QUEUE_SIZE, DEFAULT_MAX_REQUEST_SIZE, FRONTENDS
    from triserve.options import DEFAULT_MAX_ARCHIVE_RATIO, DEFAULT_MAX_ARCHIVE_SIZE

    for name, (port, title) in FRONTENDS.items():
        s.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=port, metavar="PORT",
                       help=f"{title} port (default {port}; 0 switches it off)")
    s.add_argument("--grpc-max-message-bytes", type=_positive_int, default=DEFAULT_GRPC_MAX_MESSAGE_BYTES, metavar="BYTES",
                   help="largest gRPC request or response (default 64 MiB); larger gets RESOURCE_EXHAUSTED")
    s.add_argument("--grpc-max-bytes-elements", type=_positive_int, default=DEFAULT_GRPC_MAX_BYTES_ELEMENTS,
                   metavar="COUNT", help="most BYTES (string) tensor elements in one gRPC request, over all its"
                                         " inputs (default 1048576); more gets INVALID_ARGUMENT")
    s.add_argument("--model-control-mode", default="none", choices=["none", "poll", "explicit"],
                   help="none: load everything at start; poll: also follow repository changes; "
                        "explicit: only what --load-model or the repository API asks")
    s.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="in explicit mode, a model to load at start (repeatable; '*' for all)")
    s.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                   help="in poll mode, how often the repositories are scanned (default 15)")
    s.add_argument("--exit-on-error", type=_bool, default=False, metavar="BOOL",
                   help="exit if any model fails to load (default false: serve the others)")
    s.add_argument("--strict-readiness", type=_bool, default=True, metavar="BOOL",
                   help="/v2/health/ready only when every model is ready (default true)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text lines, or one JSON object per line (default text)")
    s.add_argument("--no-access-log", action="store_true",
                   help="no access line per HTTP request (default: one at --log-level info)")
    from triserve.options import DEFAULT_HTTP_MAX_INPUT_SIZE, HTTPOptions

    s.add_argument("--http-max-input-size", type=_positive_int, default=DEFAULT_HTTP_MAX_INPUT_SIZE, metavar="BYTES",
                   help="largest v2 HTTP and TF Serving REST request body, also once decompressed (default 67108864,"
                        " 64 MiB, as Triton); larger gets 400")
    s.add_argument("--http-max-headers", type=_positive_int, default=HTTPOptions.max_headers, metavar="N",
                   help=f"most header fields in one HTTP request (default {HTTPOptions.max_headers}); more gets 431")
    s.add_argument("--http-max-header-size", type=_positive_int, default=HTTPOptions.max_header_size, metavar="BYTES",
                   help=f"largest HTTP request line and headers together (default {HTTPOptions.max_header_size});"
                        " larger gets 431")
    s.add_argument("--http-header-timeout", type=_positive_float, default=HTTPOptions.header_timeout, metavar="SECONDS",
                   help=f"an HTTP connection whose request headers take longer is closed (default"
                        f" {HTTPOptions.header_timeout:g})")
    s.add_argument("--http-max-connections", type=_positive_int, default=HTTPOptions.max_connections, metavar="N",
                   help=f"open connections per HTTP front end; requests on more get 503 (default"
                        f" {HTTPOptions.max_connections})")
    ts = s.add_argument_group("TorchServe model archives (.mar) and API")
    ts.add_argument("--model-store", metavar="DIR", help="folder of model archives (read only)")
    ts.add_argument("--models", action="extend", nargs="+", default=[], metavar="NAME=FILE.mar",
                    help="archives to serve at start: NAME=FILE, FILE, or 'all' (every archive in --model-store)")
    ts.add_argument("--ts-config", metavar="FILE", help="a TorchServe config.properties (addresses, model_store,"
                    " load_models, default_workers_per_model, models, ...); the command line wins")
    ts.add_argument("--allow-custom-handlers", action="store_true",
                    help="run Python handler code from archives (off: such archives fail to load)")
    ts.add_argument("--enable-model-api", action="store_true",
                    help="allow registering and unregistering models on the management API (off: 405)")
    ts.add_argument("--allowed-url-hosts", action="append", default=[], metavar="HOST[:PORT]",
                    help="hosts archives may be downloaded from when registered by URL (repeatable or"
                         " comma-separated; default none: remote URLs are refused)")
    ts.add_argument("--default-workers-per-model", type=int, default=None, metavar="N",
                    help="workers (model instances) per archive model (default: the core's default)")
    ts.add_argument("--job-queue-size", type=int, default=DEFAULT_JOB_QUEUE_SIZE, metavar="N",
                    help="queued requests per model before 503 (default 100)")
    ts.add_argument("--max-request-size", type=int, default=DEFAULT_MAX_REQUEST_SIZE, metavar="BYTES",
                    help="largest TorchServe request body (default 6553500)")
    ts.add_argument("--max-archive-size", type=_positive_int, default=DEFAULT_MAX_ARCHIVE_SIZE, metavar="BYTES",
                    help="largest model archive, its files uncompressed, and largest archive download"
                         " (default 4294967296, 4 GiB); larger archives are refused before anything is written")
    ts.add_argument("--max-archive-ratio", type=_positive_float, default=DEFAULT_MAX_ARCHIVE_RATIO, metavar="N",
                    help="largest compression ratio (uncompressed / compressed size) of an archive and of each"
                         " entry over 1 MiB (default 200); higher is refused as a decompression bomb")
    ts.add_argument("--enable-token-auth", action="store_true",
                    help="require TorchServe bearer tokens (written to --token-key-file); default off")
    ts.add_argument("--token-key-file", default="key_file.json", metavar="FILE",
                    help="where the token keys are written (default ./key_file.json, mode 0600)")
    ts.add_argument("--token-expiration-min", type=int, default=60, metavar="MIN",
                    help="lifetime of the inference and management keys (default 60)")
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

    a = sub.add_parser("archive", help="write a TorchServe model archive, like torch-model-archiver")
    from triserve.archiver import add_arguments

    add_arguments(a)
    a.set_defaults(func=_archive)

    e = sub.add_parser("export-examples", help="write the example model repository")
    e.add_argument("dir", help="output folder; the repository is DIR/model_repository")
    e.set_defaults(func=_export)

    b = sub.add_parser("bench", help="served vs raw in-process throughput and latency (ONNX, gRPC, TorchServe, backends)")
    b.add_argument("--model-repository", required=True, help="the example repository (DIR/model_repository of export-examples)")
    b.add_argument("-m", "--model-name", default="efficientnet_lite0_onnx", help="the ONNX model (onnx, grpc, backends)")
    b.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    b.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies of the onnx section")
    b.add_argument("--sections", default="onnx,grpc,torchserve,backends",
                   help="comma-separated sections to run: onnx, grpc, torchserve, backends (default all)")
    b.add_argument("--model-store", default=None, help="TorchServe model store (default: model_store beside the repository)")
    b.add_argument("--archive", default="efficientnet_lite0.mar", help="the archive of the torchserve section")
    b.add_argument("--backend-models", default="efficientnet_lite0_torch,efficientnet_lite0_tf",
                   help="repository models compared with their framework in the backends section, besides -m")
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    sys.exit(args.func(args))
