"""`triserve tensorflow_model_server ...`: TF Serving's command line (`--flag=value`; booleans also as
a bare `--flag`), served by triserve on TF Serving's front ends only: gRPC on --port (8500) and
REST on --rest_api_port (default 0: off, as the binary; TF Serving's Docker image passes 8501),
bound to 0.0.0.0 as TF Serving does."""

from __future__ import annotations

import argparse

from triserve.dropin import Flags, Plan, Refused, is_true, parse, planned, ports, run, truth

NAME = "tensorflow_model_server"
DESCRIPTION = "TF Serving's command line, served by triserve (TF Serving's gRPC and REST front ends only)"
DEFAULT_MODEL_NAME = "default"


def _bool_flag(p, flag: str, default: bool, help: str) -> None:
    p.add_argument(flag, nargs="?", const=True, default=default, type=truth, metavar="BOOL",
                   help=f"{help} (default {str(default).lower()})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="store_true", help="print triserve's version and exit (default off)")
    p.add_argument("--port", type=int, default=8500, metavar="PORT", help="gRPC port (default 8500)")
    p.add_argument("--rest_api_port", type=int, default=0, metavar="PORT",
                   help="REST port (default 0: no REST API, as tensorflow_model_server; its Docker image uses 8501)")
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME, metavar="NAME",
                   help="the name of --model_base_path's model (default 'default')")
    p.add_argument("--model_base_path", default=None, metavar="DIR",
                   help="serve one model from DIR/<version>/ (default none; this or --model_config_file is required)")
    p.add_argument("--model_config_file", default=None, metavar="FILE",
                   help="a models.conf (ModelServerConfig text format) instead of --model_base_path (default none)")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0, metavar="SECONDS",
                   help="how often --model_config_file is read again (default 0: only at start)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0, metavar="SECONDS",
                   help="how often version folders are checked for new and removed versions (default 1; 0: never)")

    flags = Flags(p.add_argument_group("accepted but not implemented, or refused"), NAME)
    p.set_defaults(unimplemented=flags)
    bool_value = dict(nargs="?", const=True, metavar="BOOL")
    flags.refused("--ssl_config_file", "TLS for gRPC", metavar="FILE",
                  why="triserve serves plain gRPC; terminate TLS in front of it")
    flags.refused("--use_alts_credentials", "ALTS credentials", when=is_true, condition="when true",
                  why="triserve serves plain gRPC", **bool_value)
    flags.refused("--grpc_socket_path", "a UNIX socket for gRPC", metavar="PATH",
                  why="triserve listens on TCP ports only, so clients of the socket would find no server")
    flags.refused("--platform_config_file", "per-platform session and bundle settings", metavar="FILE",
                  why="triserve would load the SavedModels without those settings")
    flags.refused("--saved_model_tags", "the MetaGraph tags to load", metavar="TAGS",
                  when=lambda v: str(v).strip() != "serve", condition="unless 'serve'",
                  why="triserve loads the 'serve' MetaGraph only")
    flags.refused("--prefer_tflite_model", "serve model.tflite where present", when=is_true, condition="when true",
                  why="triserve does not run TensorFlow Lite models", **bool_value)
    flags.refused("--use_tflite_model", "serve model.tflite", when=is_true, condition="when true",
                  why="triserve does not run TensorFlow Lite models", **bool_value)
    flags.refused("--allow_version_labels_for_unavailable_models", "labels for versions not loaded yet",
                  when=is_true, condition="when true",
                  why="triserve answers such labels as TF Serving does by default (not found)", **bool_value)
    for flag, (help, is_bool) in IGNORED.items():
        if is_bool:
            flags.ignored(flag, help, **bool_value)
        else:
            flags.ignored(flag, help, metavar="VALUE")


# TF Serving flags that change how it runs, not what it answers: accepted with a warning.
IGNORED = {
    "--rest_api_num_threads": ("REST threads", False),
    "--rest_api_timeout_in_ms": ("REST request timeout", False),
    "--rest_api_enable_cors_support": ("CORS headers on REST", True),
    "--enable_batching": ("server-side batching", True),
    "--batching_parameters_file": ("batching parameters", False),
    "--enable_per_model_batching_parameters": ("per-model batching parameters", True),
    "--max_num_load_retries": ("retries of a failed load", False),
    "--load_retry_interval_micros": ("time between load retries", False),
    "--flush_filesystem_caches": ("file system cache flushing", True),
    "--tensorflow_session_parallelism": ("TensorFlow session threads", False),
    "--tensorflow_session_config_file": ("a TensorFlow SessionConfig", False),
    "--tensorflow_intra_op_parallelism": ("TensorFlow intra-op threads", False),
    "--tensorflow_inter_op_parallelism": ("TensorFlow inter-op threads", False),
    "--per_process_gpu_memory_fraction": ("GPU memory fraction", False),
    "--grpc_channel_arguments": ("gRPC channel arguments", False),
    "--grpc_max_threads": ("gRPC threads", False),
    "--enable_model_warmup": ("warmup from assets.extra", True),
    "--num_request_iterations_for_warmup": ("warmup iterations", False),
    "--monitoring_config_file": ("a Prometheus monitoring config", False),
    "--remove_unused_fields_from_bundle_metagraph": ("MetaGraph trimming", True),
    "--enable_signature_method_name_check": ("signature method name checks", True),
    "--xla_cpu_compilation_enabled": ("XLA CPU compilation", True),
    "--enable_profiler": ("the TensorFlow profiler", True),
    "--thread_pool_factory_config_file": ("thread pool factory config", False),
    "--mixed_precision": ("mixed precision", False),
    "--skip_initialize_tpu": ("TPU initialisation", True),
    "--enable_grpc_healthcheck_service": ("gRPC health service (triserve serves it always)", True),
    "--num_tflite_pools": ("TensorFlow Lite pools", False),
    "--num_tflite_interpreters_per_pool": ("TensorFlow Lite interpreters", False),
    "--num_tflite_interpreters": ("TensorFlow Lite interpreters", False),
}


def plan(args: argparse.Namespace) -> Plan:
    warnings = args.unimplemented.check(args)
    if not args.model_base_path and not args.model_config_file:
        raise Refused("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if args.model_base_path and args.model_config_file:
        raise Refused("--model_base_path and --model_config_file cannot both be given")
    serve = ["--host", "0.0.0.0", "--file-system-poll-wait-seconds", str(args.file_system_poll_wait_seconds),
             "--model-config-file-poll-wait-seconds", str(args.model_config_file_poll_wait_seconds)]
    if args.model_config_file:
        serve += ["--model-config-file", args.model_config_file]
    else:
        serve += ["--model-base-path", args.model_base_path, "--model-name", args.model_name]
    serve += ports({"tfserving_grpc": args.port, "tfserving_rest": args.rest_api_port})
    return Plan(NAME, serve, warnings)


def parse_plan(argv: list[str] | None, prog: str = NAME) -> Plan:
    p, args = parse(prog, add_arguments, argv, DESCRIPTION)
    return planned(p, lambda: plan(args))


def main(argv: list[str] | None = None, prog: str = NAME) -> int:
    p, args = parse(prog, add_arguments, argv, DESCRIPTION)
    if args.version:
        from triserve import __version__

        print(f"TensorFlow ModelServer: triserve {__version__}")
        return 0
    return run(planned(p, lambda: plan(args)))


def console() -> None:
    """The `tensorflow_model_server` console script (distribution triserve-dropin)."""
    raise SystemExit(main())
