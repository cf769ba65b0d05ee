"""What `triserve serve` was asked to do: one frozen dataclass per concern, built once.

`from_args` reads the command line and, under it, TorchServe's config.properties (`--ts-config`:
the command line wins, then the file, then the defaults). Nothing else reads argparse values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

# Every front end: name -> (default port, what the log calls it). Port 0 switches one off.
FRONTENDS: dict[str, tuple[int, str]] = {
    "http": (8000, "KServe v2 HTTP"),
    "grpc": (8001, "KServe v2 gRPC"),
    "metrics": (8002, "Triton metrics"),
    "tfserving_grpc": (8500, "TF Serving gRPC"),
    "tfserving_rest": (8501, "TF Serving REST"),
    "torchserve_inference": (8080, "TorchServe inference"),
    "torchserve_management": (8081, "TorchServe management"),
    "torchserve_metrics": (8082, "TorchServe metrics"),
    "torchserve_grpc_inference": (7070, "TorchServe gRPC inference"),
    "torchserve_grpc_management": (7071, "TorchServe gRPC management"),
}
DEFAULT_PORTS = MappingProxyType({name: port for name, (port, _) in FRONTENDS.items()})
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # gRPC's own 4 MiB is below a batch of 8 images
DEFAULT_GRPC_MAX_BYTES_ELEMENTS = 1 << 20  # BYTES elements in one gRPC request (each a Python object)
DEFAULT_MAX_REQUEST_SIZE = 6553500  # TorchServe's max_request_size
DEFAULT_JOB_QUEUE_SIZE = 100  # TorchServe's job_queue_size
DEFAULT_HTTP_MAX_INPUT_SIZE = 64 * 1024 * 1024  # Triton's --http-max-input-size
DEFAULT_MAX_ARCHIVE_SIZE = 4 * 1024**3  # one archive's files, uncompressed
DEFAULT_MAX_ARCHIVE_RATIO = 200  # uncompressed / compressed, per entry and per archive


@dataclass(frozen=True)
class KServeOptions:
    strict_readiness: bool = True  # ready only when every model asked to load is ready
    allow_client_shm: bool = False  # clients may register system shared memory regions
    trace_config: tuple[str, ...] = ()  # --trace-config entries, Triton's syntax


@dataclass(frozen=True)
class HTTPOptions:
    """Every HTTP front end: what one connection and one request may send."""

    max_input_size: int = DEFAULT_HTTP_MAX_INPUT_SIZE  # v2 and TF Serving REST bodies, also once inflated
    max_headers: int = 100  # header fields in one request
    max_header_size: int = 64 * 1024  # request line and header fields together, in bytes
    header_timeout: float = 30.0  # seconds from a request's first byte (or the connection) to its last header
    body_timeout: float = 30.0  # seconds a request body may take after its headers, plus one per 500 bytes received
    max_connections: int = 1000  # open connections per front end; requests on more get 503
    access_log: bool = True  # one info line per request on the logger triserve.access


@dataclass(frozen=True)
class GRPCOptions:
    max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES
    max_bytes_elements: int = DEFAULT_GRPC_MAX_BYTES_ELEMENTS


@dataclass(frozen=True)
class TorchServeOptions:
    enable_model_api: bool = False
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    enable_token_auth: bool = False
    token_key_file: Path = Path("key_file.json")
    token_expiration_min: int = 60
    metrics_mode: str = "prometheus"  # config.properties metrics_mode: prometheus (the metrics API) or log
    metric_time_interval: int = 60  # seconds between the host metrics TorchServe logs (log mode)
    # front end name -> the address it binds, where config.properties gave one
    hosts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class TFServingOptions:
    config_file: Path | None = None
    model_name: str | None = None
    base_path: Path | None = None
    fs_poll_seconds: float = 1.0
    config_poll_seconds: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.config_file is not None or self.base_path is not None


@dataclass(frozen=True)
class ArchiveOptions:
    """TorchServe model archives (.mar): where they are and what they may do."""

    model_store: Path | None = None
    models: tuple[str, ...] = ()  # --models / load_models entries: NAME=FILE, FILE or all
    allow_custom_handlers: bool = False  # --allow-model-code (alias --allow-custom-handlers): API-delivered model code runs
    allowed_url_hosts: tuple[str, ...] = ()
    default_workers: int | None = None  # None: the core's default
    job_queue_size: int = DEFAULT_JOB_QUEUE_SIZE
    max_archive_size: int = DEFAULT_MAX_ARCHIVE_SIZE  # also the largest download
    max_archive_ratio: float = DEFAULT_MAX_ARCHIVE_RATIO
    # config.properties `models`: name -> version -> settings
    models_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def enabled(self) -> bool:
        return self.model_store is not None or bool(self.models)


@dataclass(frozen=True)
class ServerOptions:
    model_repositories: tuple[Path, ...] = ()
    host: str = DEFAULT_HOST
    ports: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PORTS)
    model_control_mode: str = "none"  # none, poll or explicit
    load_models: tuple[str, ...] = ()  # explicit mode: what loads at start
    repository_poll_secs: float = 15.0
    exit_on_error: bool = False
    batch_calibration: str = "on"  # on, off or remeasure (core/warmup.py)
    single_port: int = 0  # --single-port: every HTTP API on this port (0: each on its own port)
    exit_timeout_secs: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    log_level: str = "info"
    log_format: str = "text"  # text, or json: one JSON object per line
    log_file: str = ""  # "" for stderr
    http: HTTPOptions = HTTPOptions()
    kserve: KServeOptions = KServeOptions()
    grpc: GRPCOptions = GRPCOptions()
    torchserve: TorchServeOptions = TorchServeOptions()
    tfserving: TFServingOptions = TFServingOptions()
    archives: ArchiveOptions = ArchiveOptions()

    def host_of(self, frontend: str) -> str:
        return self.torchserve.hosts.get(frontend, self.host)


def from_args(args: argparse.Namespace) -> ServerOptions:
    """The options of `triserve serve`; a broken --ts-config raises ServerError."""
    values: dict[str, Any] = dict(vars(args))
    ports = {name: values[f"{name}_port"] for name in FRONTENDS}
    if values.get("model_repository"):
        from triserve.repository import layout

        layout.apply(values)  # a TorchServe, TF Serving or single-model folder is served as its layout needs
    if values.get("ts_config"):
        from triserve import ts_config

        ts_config.apply(Path(values["ts_config"]), values, ports, dict(DEFAULT_PORTS), values["host"], DEFAULT_HOST)
    if values.get("models_default_all") and not values.get("models"):
        values["models"] = ["all"]
    hosts = [h.strip() for entry in values.get("allowed_url_hosts") or [] for h in entry.split(",") if h.strip()]
    models = [m.strip() for entry in values.get("models") or [] for m in str(entry).split(",") if m.strip()]
    return ServerOptions(
        model_repositories=tuple(Path(p) for p in values["model_repository"]),
        host=values["host"],
        ports=MappingProxyType(ports),
        model_control_mode=values["model_control_mode"],
        load_models=tuple(values["load_model"]),
        repository_poll_secs=values["repository_poll_secs"],
        exit_on_error=values["exit_on_error"],
        batch_calibration=values.get("batch_calibration") or "on",
        single_port=values.get("single_port") or 0,
        exit_timeout_secs=values.get("exit_timeout_secs") or 30.0,
        log_level=values["log_level"],
        log_format=values.get("log_format") or "text",
        log_file=values.get("log_file") or "",
        http=HTTPOptions(
            max_input_size=values.get("http_max_input_size") or DEFAULT_HTTP_MAX_INPUT_SIZE,
            max_headers=values.get("http_max_headers") or HTTPOptions.max_headers,
            max_header_size=values.get("http_max_header_size") or HTTPOptions.max_header_size,
            header_timeout=values.get("http_header_timeout") or HTTPOptions.header_timeout,
            body_timeout=values.get("http_body_timeout") or HTTPOptions.body_timeout,
            max_connections=values.get("http_max_connections") or HTTPOptions.max_connections,
            access_log=not values.get("no_access_log"),
        ),
        kserve=KServeOptions(
            strict_readiness=values["strict_readiness"],
            allow_client_shm=bool(values.get("allow_client_shm")),
            trace_config=tuple(values.get("trace_config") or ()),
        ),
        grpc=GRPCOptions(
            max_message_bytes=values["grpc_max_message_bytes"],
            max_bytes_elements=values.get("grpc_max_bytes_elements") or DEFAULT_GRPC_MAX_BYTES_ELEMENTS,
        ),
        torchserve=TorchServeOptions(
            enable_model_api=bool(values.get("enable_model_api")),
            max_request_size=values.get("max_request_size") or DEFAULT_MAX_REQUEST_SIZE,
            enable_token_auth=bool(values.get("enable_token_auth")),
            token_key_file=Path(values.get("token_key_file") or "key_file.json"),
            token_expiration_min=int(values.get("token_expiration_min") or 60),
            metrics_mode=values.get("metrics_mode") or "prometheus",
            metric_time_interval=int(values.get("metric_time_interval") or 60),
            hosts=MappingProxyType(dict(values.get("torchserve_hosts") or {})),
        ),
        tfserving=TFServingOptions(
            config_file=Path(values["model_config_file"]) if values.get("model_config_file") else None,
            model_name=values.get("model_name"),
            base_path=Path(values["model_base_path"]) if values.get("model_base_path") else None,
            fs_poll_seconds=values["file_system_poll_wait_seconds"],
            config_poll_seconds=values["model_config_file_poll_wait_seconds"],
        ),
        archives=ArchiveOptions(
            model_store=Path(values["model_store"]) if values.get("model_store") else None,
            models=tuple(models),
            allow_custom_handlers=bool(values.get("allow_custom_handlers")),
            allowed_url_hosts=tuple(hosts),
            default_workers=values.get("default_workers_per_model"),
            job_queue_size=values.get("job_queue_size") or DEFAULT_JOB_QUEUE_SIZE,
            max_archive_size=values.get("max_archive_size") or DEFAULT_MAX_ARCHIVE_SIZE,
            max_archive_ratio=values.get("max_archive_ratio") or DEFAULT_MAX_ARCHIVE_RATIO,
            models_config=MappingProxyType(dict(values.get("ts_models_config") or {})),
        ),
    )
