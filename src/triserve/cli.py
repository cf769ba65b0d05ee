"""The `triserve` command: serve, classify, archive, export-examples, bench, and the drop-in
command lines of tritonserver, torchserve and tensorflow_model_server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triserve serve", add_help=False)
    add_serve_arguments(p)
    return p


def _with_settings(args: argparse.Namespace, argv: list[str], always: bool = False):
    """serve's arguments with what the command line left out from TRISERVE_* variables and the
    --config file (settings.py), and where each came from; (args, None) when neither is used."""
    import os

    from triserve import settings

    used = getattr(args, "config", None) or any(k.upper().startswith(settings.ENV_PREFIX) for k in os.environ)
    if not used and not always:
        return args, None
    given = settings.given(_serve_parser(), argv)
    return settings.effective(_serve_parser(), args, given)


def _serve(args: argparse.Namespace) -> int:
    from triserve.errors import ServerError
    from triserve.options import from_args
    from triserve.settings import SettingsError

    try:
        args, _ = _with_settings(args, getattr(args, "argv", [])[1:])
    except SettingsError as e:
        print(f"triserve serve: {e}", file=sys.stderr)
        return 2
    try:
        options = from_args(args)
    except ServerError as e:  # a --ts-config that cannot be read
        print(f"triserve: {e.message}", file=sys.stderr)
        return 1
    return run_serve(options)


def run_serve(options) -> int:
    """Serve `options` (`serve`, and the drop-in commands), after the checks the options need."""
    from triserve.server import serve

    if options.kserve.trace_config:
        from triserve.protocols.kserve.trace import parse_config

        try:
            parse_config(options.kserve.trace_config)
        except ValueError as e:
            print(f"triserve: --trace-config: {e}", file=sys.stderr)
            return 1
    return serve(options)


def _config_show(args: argparse.Namespace) -> int:
    from triserve import settings

    try:
        merged, sources = _with_settings(args, getattr(args, "argv", [])[2:], always=True)
    except settings.SettingsError as e:
        print(f"triserve config show: {e}", file=sys.stderr)
        return 2
    print(settings.show(merged, sources, settings.settings_of(_serve_parser())), end="")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from triserve.client.classify import classify_main

    return classify_main(args)


def _export(args: argparse.Namespace) -> int:
    from triserve.examples.export import PHOTO, export_examples

    logging.basicConfig(level="INFO", format="export-examples: %(message)s")
    repo = export_examples(Path(args.dir))
    print(f"example model repository written to {repo}; a photo to classify: {Path(args.dir) / PHOTO}")
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


def _version() -> str:
    from triserve import __version__

    return f"triserve {__version__}"


SERVE_HELP = ("serve Triton model repositories, TorchServe model archives (.mar) and TF Serving models"
              " (models.conf or one base path) on the KServe v2 (HTTP, gRPC), TorchServe and TF Serving APIs")


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    """Every `triserve serve` flag (also those of `triserve config show`)."""
    s.add_argument("--model-repository", action="append", default=[], metavar="DIR",
                   help="a Triton model repository (repeatable; repositories merge; default none)")
    tf = s.add_argument_group("TF Serving models (SavedModels in numeric version folders)")
    tf.add_argument("--model-config-file", metavar="FILE",
                    help="a TF Serving models.conf (ModelServerConfig text format); relative base_paths resolve"
                         " against its folder (default none)")
    tf.add_argument("--model-base-path", metavar="DIR", help="serve one TF Serving model from DIR/<version>/ (default none)")
    tf.add_argument("--model-name", metavar="NAME", help="the name of --model-base-path's model, or of the one model a --model-repository"
                         " folder holds as a bare file or folder (default 'default')")
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
    s.add_argument("--single-port", type=int, default=0, metavar="PORT",
                   help="serve every HTTP API on PORT, routed by path: KServe v2 (/v2), TF Serving REST (/v1),"
                        " TorchServe inference (/predictions, /ping, ...) and /metrics (Triton's); every gRPC"
                        " service on --grpc-port; other HTTP ports unused, TorchServe management stays on its own"
                        " port. Listens while models load (readiness 503 until they are ready), as KServe and"
                        " Knative need (default 0: each API on its own port)")
    s.add_argument("--exit-timeout-secs", type=_positive_float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM or SIGINT, how long in-flight requests may take to finish before the server"
                        " exits anyway (default 30, as Triton); readiness answers 503 at once")
    s.add_argument("--grpc-max-message-bytes", type=_positive_int, default=DEFAULT_GRPC_MAX_MESSAGE_BYTES, metavar="BYTES",
                   help="largest gRPC request or response (default 64 MiB); larger gets RESOURCE_EXHAUSTED")
    s.add_argument("--grpc-max-bytes-elements", type=_positive_int, default=DEFAULT_GRPC_MAX_BYTES_ELEMENTS,
                   metavar="COUNT", help="most BYTES (string) tensor elements in one gRPC request, over all its"
                                         " inputs (default 1048576); more gets INVALID_ARGUMENT")
    s.add_argument("--model-control-mode", default="none", choices=["none", "poll", "explicit"],
                   help="none: load everything at start; poll: also follow repository changes; "
                        "explicit: only what --load-model (and --models archives) or the repository API asks"
                        " (default none)")
    s.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="in explicit mode, a model to load at start (repeatable; '*' for all; default none)")
    s.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                   help="in poll mode, how often the repositories are scanned (default 15)")
    s.add_argument("--exit-on-error", type=_bool, default=False, metavar="BOOL",
                   help="exit if any model fails to load (default false: serve the others)")
    s.add_argument("--batch-calibration", default="on", choices=["on", "off", "remeasure"],
                   help="cap dynamic batches at the batch size measured fastest at load (default on: measured"
                        " once per model file and machine, cached in $XDG_CACHE_HOME/triserve; remeasure:"
                        " measure again; off: batches up to max_batch_size)")
    s.add_argument("--strict-readiness", type=_bool, default=True, metavar="BOOL",
                   help="/v2/health/ready only when every model is ready (default true)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the least severe messages logged (default info)")
    s.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text lines, or one JSON object per line (default text)")
    s.add_argument("--log-file", default="", metavar="FILE",
                   help="write the log to FILE instead of stderr (default: stderr); /v2/logging reports it")
    s.add_argument("--allow-client-shm", type=_bool, default=False, metavar="BOOL",
                   help="let KServe v2 clients register system shared memory regions (/dev/shm objects the server's"
                        " user can open) and send and receive tensors through them (default false, as Triton)")
    s.add_argument("--trace-config", action="append", default=[], metavar="[triton,]SETTING=VALUE",
                   help="Triton's trace settings: level=OFF|TIMESTAMPS, rate=N (every Nth request; default 1000),"
                        " count=N (-1: no limit, the default), triton,file=FILE (the trace JSON),"
                        " triton,log-frequency=N (every N traces to FILE.<index>; default 0: each trace to FILE);"
                        " mode=opentelemetry exports spans instead (opentelemetry,url=URL, default"
                        " http://localhost:4318/v1/traces; opentelemetry,resource=KEY=VALUE; opentelemetry,bsp_*);"
                        " repeatable; default level=OFF, mode=triton; /v2/trace/setting changes them while serving")
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
    s.add_argument("--http-body-timeout", type=_positive_float, default=HTTPOptions.body_timeout, metavar="SECONDS",
                   help=f"an HTTP request body not received within this long, plus a second per 500 bytes received,"
                        f" gets 408 and its connection closed (default {HTTPOptions.body_timeout:g})")
    s.add_argument("--http-max-connections", type=_positive_int, default=HTTPOptions.max_connections, metavar="N",
                   help=f"open connections per HTTP front end; requests on more get 503 (default"
                        f" {HTTPOptions.max_connections})")
    ts = s.add_argument_group("TorchServe model archives (.mar) and API")
    ts.add_argument("--model-store", metavar="DIR", help="folder of model archives (read only; default none)")
    ts.add_argument("--models", action="extend", nargs="+", default=[], metavar="NAME=FILE.mar",
                    help="archives to serve at start, also in explicit mode: NAME=FILE, FILE, or 'all' (every"
                         " archive in --model-store); default none")
    ts.add_argument("--ts-config", metavar="FILE", help="a TorchServe config.properties (addresses, model_store,"
                    " load_models, default_workers_per_model, models, ...); the command line wins (default none)")
    ts.add_argument("--allow-model-code", "--allow-custom-handlers", dest="allow_custom_handlers", action="store_true",
                    help="run model code that arrives through an API: Python handler code in archives, and"
                         " repository-API uploads holding code or Python models (default off: they are refused;"
                         " Python models in the model repositories always run). --allow-custom-handlers is"
                         " TorchServe's name for it")
    ts.add_argument("--enable-model-api", action="store_true",
                    help="allow registering and unregistering models on the management API (default off: 405)")
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
    s.add_argument("--config", metavar="FILE.yaml",
                   help="a YAML file of serve settings (keys: the flags' names, e.g. http-port: 9000); the"
                        " command line wins, then TRISERVE_* variables (TRISERVE_HTTP_PORT=9000), then the file"
                        " (default: $TRISERVE_CONFIG, else none)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triserve", description=__doc__)
    p.add_argument("--version", action="version", version=_version(), help="print triserve's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP)
    add_serve_arguments(s)
    s.set_defaults(func=_serve)

    g = sub.add_parser("config", help="show the effective serve settings: flags, TRISERVE_* variables, --config file")
    actions = g.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print every serve setting and where it came from (flag, env, file,"
                                           " default) as YAML that --config reads; takes serve's flags",
                              description="Print every serve setting, as YAML that --config reads, and where it"
                                          " came from: a flag, a TRISERVE_* variable, the --config file or the"
                                          " default (in that order of precedence).")
    add_serve_arguments(show)
    show.set_defaults(func=_config_show)

    c = sub.add_parser("classify", help="classify images with a served model, like Triton's image_client")
    c.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of them")
    c.add_argument("-m", "--model-name", required=True, help="the served model (required)")
    c.add_argument("-x", "--model-version", default="", help="the model version (default: the server's choice)")
    c.add_argument("-u", "--url", default=None, help="server URL (default localhost:8000, gRPC localhost:8001)")
    c.add_argument("-i", "--protocol", default="http", type=str.lower, choices=["http", "grpc"],
                   help="KServe v2 over HTTP or gRPC (default http)")
    c.add_argument("-c", "--classes", type=_positive_int, default=3, help="how many classes to print (default 3)")
    c.add_argument("--server-side", action="store_true",
                   help="send each image file as it is (one BYTES element) to a model that decodes it itself,"
                        " such as efficientnet_lite0_jpeg (default off: the client prepares the pixels)")
    c.add_argument("-s", "--scaling", default="NONE", type=str.upper, choices=["NONE", "INCEPTION", "VGG"],
                   help="pixel scaling before inference, as image_client: NONE (0..255), INCEPTION (-1..1),"
                        " VGG (mean subtracted); default NONE")
    c.add_argument("-b", "--batch-size", type=_positive_int, default=1,
                   help="images per request, up to the model's max_batch_size (default 1)")
    c.set_defaults(func=_classify)

    a = sub.add_parser("archive", help="write a TorchServe model archive, like torch-model-archiver")
    from triserve.archiver import add_arguments

    add_arguments(a)
    a.set_defaults(func=_archive)

    e = sub.add_parser("export-examples", help="write the example models (Triton repository, TorchServe archive)"
                                                " and a photo to classify")
    e.add_argument("dir", help="output folder: DIR/model_repository, DIR/model_store, DIR/images/kitten.jpg")
    e.set_defaults(func=_export)

    b = sub.add_parser("bench", help="served vs raw in-process throughput and latency (ONNX, gRPC, TorchServe, backends)")
    b.add_argument("--model-repository", required=True,
                   help="the example repository (DIR/model_repository of export-examples; required)")
    b.add_argument("-m", "--model-name", default="efficientnet_lite0_onnx",
                   help="the ONNX model (onnx, grpc, backends sections; default efficientnet_lite0_onnx)")
    b.add_argument("--seconds", type=_positive_float, default=5.0,
                   help="length of each measurement in seconds (default 5)")
    b.add_argument("--concurrency", default="1,8",
                   help="comma-separated client concurrencies of the onnx section (default 1,8)")
    b.add_argument("--sections", default="onnx,grpc,torchserve,backends,sweep,openvino,shm,ensemble",
                   help="comma-separated sections to run: onnx, grpc, torchserve, backends, sweep, openvino, shm,"
                        " ensemble, and ray (through Ray Serve; needs triserve[ray], so not in the default)"
                        " (default all but ray)")
    b.add_argument("--model-store", default=None, help="TorchServe model store (default: model_store beside the repository)")
    b.add_argument("--archive", default="efficientnet_lite0.mar",
                   help="the archive of the torchserve section (default efficientnet_lite0.mar)")
    b.add_argument("--perf-analyzer", default=None, metavar="PATH",
                   help="Triton's perf_analyzer for the shm section (default: .perf-venv/bin/perf-analyzer of the"
                        " source checkout, written by scripts/setup-perf-analyzer, else perf_analyzer on PATH)")
    b.add_argument("--backend-models", default="efficientnet_lite0_torch,efficientnet_lite0_tf",
                   help="repository models compared with their framework in the backends section, besides -m"
                        " (default efficientnet_lite0_torch,efficientnet_lite0_tf)")
    b.set_defaults(func=_bench)

    from triserve.integrations.ray import command as ray_command

    r = sub.add_parser("ray", help="serve a model repository on a Ray cluster with Ray Serve (pip install"
                                   " 'triserve[ray]')", description=ray_command.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ray_command.add_arguments(r)
    r.set_defaults(func=ray_command.run)

    import importlib

    from triserve.dropin import SERVERS

    for name, module_name in SERVERS.items():
        module = importlib.import_module(module_name)
        d = sub.add_parser(name, help=f"drop-in: {module.DESCRIPTION}", description=module.__doc__,
                           usage=f"triserve {name} [options]", formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(d)
        d.set_defaults(func=_dropin_parsed, server=name)
    return p


def _dropin_parsed(args: argparse.Namespace) -> int:
    """A drop-in command parsed by this parser (main() hands its arguments to the server's own)."""
    print(f"triserve: run `triserve {args.server} ...` from the command line", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from triserve.dropin import SERVERS

    if argv and argv[0] in SERVERS:  # the server's own command line: its module parses it
        import importlib

        module = importlib.import_module(SERVERS[argv[0]])
        sys.exit(module.main(argv[1:], prog=f"triserve {argv[0]}"))
    args = parser().parse_args(argv)
    args.argv = argv  # serve and config show tell the flags given from the defaults
    sys.exit(args.func(args))
