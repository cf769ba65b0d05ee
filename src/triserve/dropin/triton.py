"""`triserve tritonserver ...`: Triton Inference Server's command line (its flag names, `--flag=value`
or `--flag value`, booleans as true/false/on/off/1/0), served by triserve on Triton's front ends
only: KServe v2 HTTP (8000), gRPC (8001) and metrics (8002), bound to 0.0.0.0 as Triton does.
Triton's defaults apply where they differ from `triserve serve`'s: --exit-on-error is true."""

from __future__ import annotations

import argparse

from triserve.dropin import Flags, Plan, Refused, is_true, parse, planned, ports, run, truth

NAME = "tritonserver"
DESCRIPTION = ("Triton Inference Server's command line, served by triserve (KServe v2 HTTP, gRPC and metrics"
               " front ends only)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    repo = p.add_argument_group("model repository")
    repo.add_argument("--model-repository", "--model-store", dest="model_repository", action="append", default=[],
                      metavar="DIR", help="a model repository (repeatable; --model-store is the same flag; required)")
    repo.add_argument("--model-control-mode", default="none", choices=["none", "poll", "explicit"],
                      help="none: load every model at start; poll: also follow repository changes; explicit: only"
                           " --load-model models and the repository API (default none)")
    repo.add_argument("--load-model", action="append", default=[], metavar="NAME",
                      help="in explicit mode, a model to load at start (repeatable; '*' alone: all; default none)")
    repo.add_argument("--repository-poll-secs", type=int, default=15, metavar="SECONDS",
                      help="in poll mode, seconds between repository polls (default 15)")
    repo.add_argument("--exit-on-error", type=truth, default=True, metavar="BOOL",
                      help="exit if a model fails to load at start (default true, as Triton)")
    repo.add_argument("--strict-readiness", type=truth, default=True, metavar="BOOL",
                      help="/v2/health/ready only when every model is ready (default true)")
    repo.add_argument("--strict-model-config", type=truth, default=None, metavar="BOOL",
                      help="true: models need a complete config.pbtxt (default false: auto-complete; true is"
                           " refused: triserve always auto-completes, so such models would load instead of failing)")

    http = p.add_argument_group("front ends")
    http.add_argument("--allow-http", type=truth, default=True, metavar="BOOL",
                      help="serve KServe v2 HTTP (default true)")
    http.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="v2 HTTP port (default 8000)")
    http.add_argument("--http-address", default="0.0.0.0", metavar="ADDRESS",
                      help="address the HTTP front end binds (default 0.0.0.0)")
    http.add_argument("--allow-grpc", type=truth, default=True, metavar="BOOL",
                      help="serve KServe v2 gRPC (default true)")
    http.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="v2 gRPC port (default 8001)")
    http.add_argument("--grpc-address", default=None, metavar="ADDRESS",
                      help="address the gRPC front end binds (default 0.0.0.0; must equal --http-address)")
    http.add_argument("--allow-metrics", type=truth, default=True, metavar="BOOL",
                      help="serve Prometheus metrics (default true)")
    http.add_argument("--metrics-port", type=int, default=8002, metavar="PORT", help="metrics port (default 8002)")
    http.add_argument("--metrics-address", default=None, metavar="ADDRESS",
                      help="address the metrics front end binds (default: --http-address; must equal it)")
    http.add_argument("--http-max-input-size", type=int, default=None, metavar="BYTES",
                      help="largest HTTP request body (default 67108864, 64 MiB)")

    logging = p.add_argument_group("logging")
    logging.add_argument("--log-verbose", type=_int_bool, default=0, metavar="LEVEL",
                         help="verbose logging level; 1 or more logs debug messages (default 0)")
    logging.add_argument("--log-info", type=truth, default=True, metavar="BOOL",
                         help="log info messages (default true)")
    logging.add_argument("--log-warning", type=truth, default=True, metavar="BOOL",
                         help="log warnings (default true)")
    logging.add_argument("--log-error", type=truth, default=True, metavar="BOOL", help="log errors (default true)")
    logging.add_argument("--log-file", default="", metavar="FILE", help="write the log to FILE (default: the console)")
    trace = p.add_argument_group("tracing")
    trace.add_argument("--trace-config", action="append", default=[], metavar="[triton,]SETTING=VALUE",
                       help="trace settings: level=OFF|TIMESTAMPS, rate=N, count=N, triton,file=FILE,"
                            " triton,log-frequency=N (repeatable; default: tracing off)")
    for flag, setting in LEGACY_TRACE.items():
        trace.add_argument(flag, default=None, metavar="VALUE",
                           help=f"the older spelling of --trace-config {setting}=VALUE (default: not set)")

    flags = Flags(p.add_argument_group("accepted but not implemented, or refused"), NAME)
    p.set_defaults(unimplemented=flags)
    refused = "triserve does not have it"
    flags.refused("--disable-auto-complete-config", "models need a complete config.pbtxt", nargs=0,
                  action=_Set, why="triserve always auto-completes configurations, so models that Triton refuses"
                                   " would load")
    flags.refused("--model-namespacing", "models of the same name in different repositories", metavar="BOOL",
                  when=is_true, condition="when true", why=refused)
    flags.refused("--model-config-name", "the config file name to read instead of config.pbtxt", metavar="NAME",
                  why="triserve reads config.pbtxt only")
    flags.refused("--grpc-use-ssl", "TLS on gRPC", metavar="BOOL", when=is_true, condition="when true",
                  why="triserve serves plain gRPC; terminate TLS in front of it")
    flags.refused("--grpc-use-ssl-mutual", "mutual TLS on gRPC", metavar="BOOL", when=is_true,
                  condition="when true", why="triserve serves plain gRPC; terminate TLS in front of it")
    flags.refused("--http-restricted-api", "APIs that need a header", metavar="APIS:KEY=VALUE", action="append",
                  why="triserve would serve those APIs without the header check")
    flags.refused("--grpc-restricted-protocol", "protocols that need a header", metavar="PROTOCOLS:KEY=VALUE",
                  action="append", why="triserve would serve those protocols without the header check")
    flags.refused("--allow-sagemaker", "the SageMaker front end", metavar="BOOL", when=is_true,
                  condition="when true", why=refused)
    flags.refused("--allow-vertex-ai", "the Vertex AI front end", metavar="BOOL", when=is_true,
                  condition="when true", why=refused)
    for flag, help in IGNORED.items():
        flags.ignored(flag, help, metavar="VALUE", action="append" if flag in REPEATED else "store")


# Triton flags that change how it runs, not what it answers: accepted with a warning.
IGNORED = {
    "--id": "an identifier for this server",
    "--exit-timeout-secs": "seconds to wait for in-flight requests on exit",
    "--model-load-thread-count": "threads loading models",
    "--model-load-retry-count": "retries of a failed model load",
    "--model-load-gpu-limit": "GPU memory share models may load into",
    "--reuse-http-port": "share the HTTP port with other servers",
    "--reuse-grpc-port": "share the gRPC port with other servers",
    "--http-header-forward-pattern": "HTTP headers forwarded as request parameters",
    "--grpc-header-forward-pattern": "gRPC headers forwarded as request parameters",
    "--http-thread-count": "threads serving HTTP",
    "--grpc-infer-allocation-pool-size": "gRPC request objects kept for reuse",
    "--grpc-server-cert": "the gRPC TLS certificate (used only with --grpc-use-ssl)",
    "--grpc-server-key": "the gRPC TLS key (used only with --grpc-use-ssl)",
    "--grpc-root-cert": "the gRPC TLS root certificate (used only with --grpc-use-ssl)",
    "--grpc-infer-response-compression-level": "gRPC response compression",
    "--grpc-keepalive-time": "gRPC keepalive ping period",
    "--grpc-keepalive-timeout": "gRPC keepalive ping timeout",
    "--grpc-keepalive-permit-without-calls": "gRPC keepalive pings without calls",
    "--grpc-http2-max-pings-without-data": "gRPC HTTP/2 pings without data",
    "--grpc-http2-min-recv-ping-interval-without-data": "gRPC HTTP/2 ping interval",
    "--grpc-http2-max-ping-strikes": "gRPC HTTP/2 bad pings tolerated",
    "--grpc-max-connection-age": "gRPC connection lifetime",
    "--grpc-max-connection-age-grace": "gRPC connection grace period",
    "--log-format": "Triton's log line format (default or ISO8601)",
    "--sagemaker-port": "the SageMaker port",
    "--sagemaker-safe-port-range": "SageMaker's port range",
    "--sagemaker-thread-count": "SageMaker threads",
    "--vertex-ai-port": "the Vertex AI port",
    "--vertex-ai-thread-count": "Vertex AI threads",
    "--vertex-ai-default-model": "Vertex AI's default model",
    "--allow-gpu-metrics": "GPU metrics",
    "--allow-cpu-metrics": "CPU metrics",
    "--metrics-interval-ms": "metrics collection period",
    "--metrics-config": "metrics settings (repeatable)",
    "--cache-config": "response cache settings (repeatable)",
    "--cache-directory": "response cache libraries",
    "--response-cache-byte-size": "response cache size",
    "--rate-limit": "rate limiting mode (execution_count or off)",
    "--rate-limit-resource": "rate limiter resources (repeatable)",
    "--pinned-memory-pool-byte-size": "pinned host memory pool",
    "--cuda-memory-pool-byte-size": "CUDA memory pool (repeatable)",
    "--cuda-virtual-address-size": "CUDA virtual address space (repeatable)",
    "--min-supported-compute-capability": "minimum GPU compute capability",
    "--buffer-manager-thread-count": "buffer manager threads",
    "--backend-directory": "where backends are found",
    "--repoagent-directory": "where repository agents are found",
    "--backend-config": "backend settings, BACKEND,SETTING=VALUE (repeatable)",
    "--host-policy": "host policies (repeatable)",
}
# Triton's older trace flags, each one --trace-config setting.
LEGACY_TRACE = {"--trace-file": "triton,file", "--trace-level": "level", "--trace-rate": "rate",
                "--trace-count": "count", "--trace-log-frequency": "triton,log-frequency"}
REPEATED = {"--metrics-config", "--cache-config", "--rate-limit-resource",
            "--cuda-memory-pool-byte-size", "--cuda-virtual-address-size", "--backend-config", "--host-policy",
            "--model-load-gpu-limit"}


class _Set(argparse.Action):
    """A flag without a value (Triton's ArgNone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)


def _int_bool(text: str) -> int:
    """--log-verbose: an integer, or true/false."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value for --log-verbose: {text}") from None


def plan(args: argparse.Namespace) -> Plan:
    warnings = args.unimplemented.check(args)
    if args.strict_model_config:
        raise Refused("--strict-model-config=true is not supported by triserve: it always auto-completes"
                      " configurations, so models Triton refuses would load")
    if not args.model_repository:
        raise Refused("--model-repository must be specified")
    if "*" in args.load_model and len(args.load_model) > 1:
        raise Refused("--load-model=* cannot be combined with other --load-model arguments")
    addresses = {args.http_address, args.grpc_address or args.http_address, args.metrics_address or args.http_address}
    if len(addresses) > 1:
        raise Refused(f"different addresses per front end ({', '.join(sorted(addresses))}) are not supported by"
                      " triserve: give --http-address, --grpc-address and --metrics-address the same address")
    if args.log_verbose > 0:
        level = "debug"
    elif args.log_info:
        level = "info"
    elif args.log_warning:
        level = "warning"
    else:
        level = "error"  # Triton's --log-error=false has no triserve equivalent: errors are always logged
    serve = [arg for repo in args.model_repository for arg in ("--model-repository", repo)]
    serve += ["--host", args.http_address, "--model-control-mode", args.model_control_mode,
              "--repository-poll-secs", str(args.repository_poll_secs), "--exit-on-error", str(args.exit_on_error),
              "--strict-readiness", str(args.strict_readiness), "--log-level", level]
    serve += [arg for name in args.load_model for arg in ("--load-model", name)]
    if args.log_file:
        serve += ["--log-file", args.log_file]
    traces = [f"{setting}={getattr(args, flag[2:].replace('-', '_'))}" for flag, setting in LEGACY_TRACE.items()
              if getattr(args, flag[2:].replace("-", "_")) is not None]
    serve += [arg for entry in [*traces, *args.trace_config] for arg in ("--trace-config", entry)]
    if args.http_max_input_size is not None:
        serve += ["--http-max-input-size", str(args.http_max_input_size)]
    serve += ports({"http": args.http_port if args.allow_http else 0,
                    "grpc": args.grpc_port if args.allow_grpc else 0,
                    "metrics": args.metrics_port if args.allow_metrics else 0})
    return Plan(NAME, serve, warnings)


def parse_plan(argv: list[str] | None, prog: str = NAME) -> Plan:
    p, args = parse(prog, add_arguments, argv, DESCRIPTION)
    return planned(p, lambda: plan(args))


def main(argv: list[str] | None = None, prog: str = NAME) -> int:
    return run(parse_plan(argv, prog))


def console() -> None:
    """The `tritonserver` console script (distribution triserve-dropin)."""
    raise SystemExit(main())
