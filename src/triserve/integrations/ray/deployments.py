"""The Ray Serve application: an ingress deployment serving triserve's HTTP routes, and a model
deployment whose every replica is the engine (the model sources, the backends and the dynamic
batcher) of `triserve serve`.

    client -> Serve's proxy -> Ingress (v2 HTTP, TF Serving REST, TorchServe inference: the protocol
              packages' own ASGI apps over a RemoteDataPlane) -> Models replica (a real DataPlane)

The ingress retries inference on another replica when the one answering dies; check_health()
of a model replica fails when a model it served stopped being ready.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
import ray
from ray import serve

from triserve.core.processors import Reply, Row
from triserve.core.types import InferRequest, InferResponse
from triserve.errors import Code, ServerError
from triserve.integrations.ray.snapshot import Failure, Snapshot, merge, take

log = logging.getLogger("triserve")

RETRYABLE = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError)
SNAPSHOT_SECONDS = 5.0  # how often the ingress refreshes what the replicas serve (readiness, index)


@dataclass(frozen=True)
class Settings:
    """How the application is deployed (the `triserve ray` flags, or the app builder's arguments)."""

    serve_args: tuple[str, ...]  # `triserve serve` arguments for every model replica (--model-repository DIR ...)
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on ongoing requests
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 16
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_replicas_per_node: int | None = None
    retries: int = 3  # how many times the ingress retries on another replica (0: never)
    ingress_replicas: int = 1
    ingress_resources: dict[str, float] = field(default_factory=dict)  # Ray resources pinning the ingress
    health_check_period_s: float = 10.0
    autoscaling_extra: dict[str, Any] = field(default_factory=dict)  # more autoscaling_config fields
    multiplex: int | None = None  # models per replica: @serve.multiplexed (LRU) instead of every model everywhere

    def model_options(self) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
        }
        if self.max_replicas_per_node:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscale is not None:
            low, high = self.autoscale
            options["autoscaling_config"] = {
                "min_replicas": low, "max_replicas": high,
                "target_ongoing_requests": self.target_ongoing_requests, **self.autoscaling_extra,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


def _options(serve_args: list[str]):
    """`triserve serve`'s options from its arguments."""
    from triserve.cli import _serve_parser
    from triserve.options import from_args

    return from_args(_serve_parser().parse_args(serve_args))


def _multiplex_options(serve_args: list[str]):
    """A multiplexed replica's options: explicit mode, nothing loaded at start (Serve's
    multiplexing loads each model on its first request and evicts the least recently used)."""
    import dataclasses

    return dataclasses.replace(_options(serve_args), model_control_mode="explicit", load_models=())


def _startup_models(options: Any, dataplane: Any) -> list[str]:
    """What explicit mode loads at start, as `triserve serve` (server.Server._startup_models)."""
    names = list(options.load_models)
    if options.model_control_mode == "explicit" and dataplane.registry is not None and "*" not in names:
        names += [n for n in dataplane.registry.names() if n not in names]
    return names


@serve.deployment(name="TriserveModels")
class Models:
    """One replica: the data plane of `triserve serve` over the same model sources."""

    async def __init__(self, serve_args: list[str]) -> None:
        from triserve import logs
        from triserve.server import build_dataplane

        options = _options(list(serve_args))
        logs.configure_runtime(options.log_level, options.log_format, options.log_file)
        self.dataplane = build_dataplane(options)
        failed = await self.dataplane.manager.start(_startup_models(options, self.dataplane))
        if failed and options.exit_on_error:
            raise RuntimeError(f"model(s) failed to load: {', '.join(failed)} (--exit-on-error)")
        self.started = [n for n in self.dataplane.names() if self.dataplane.versions(n)]

    def describe(self) -> Snapshot:
        return take(self.dataplane)

    async def infer(self, name: str, version: int, request: InferRequest, split: bool) -> InferResponse | Failure:
        try:
            model = self.dataplane.model(name, version)
            return await self.dataplane.infer(model, request, split)
        except ServerError as e:
            return Failure.of(e)

    async def predict(self, name: str, version: int, rows: list[Row]) -> list[Reply] | Failure:
        try:
            return await self.dataplane.predict(self.dataplane.model(name, version), rows)
        except ServerError as e:
            return Failure.of(e)

    def check_health(self) -> None:
        """Serve replaces the replica when a model that was ready here is not any more."""
        lost = [n for n in self.started if not self.dataplane.versions(n)]
        if lost:
            raise RuntimeError(f"model(s) no longer ready on this replica: {', '.join(lost)}")


class _Resident:
    """A model held by Serve's multiplexing cache on one replica; Serve calls __del__ when it
    evicts the model (in a thread of its executor): the model is unloaded from the replica's data
    plane before Serve loads the next one."""

    def __init__(self, replica: "MultiplexedModels", name: str) -> None:
        self.replica, self.name, self.done = replica, name, False

    def __del__(self) -> None:
        if self.done:
            return
        self.done = True
        replica = self.replica
        try:
            future = asyncio.run_coroutine_threadsafe(replica.evict(self.name), replica.loop)
        except RuntimeError:  # the replica's loop is closed: it is shutting down
            return
        if threading.current_thread() is not replica.loop_thread:
            future.result()  # Serve's executor thread: the unload is over before the next load


@serve.deployment(name="TriserveMultiplexed")
class MultiplexedModels:
    """One replica of a multiplexed application: the data plane of `triserve serve` over the same
    model sources, holding at most `models_per_replica` models (Serve's @serve.multiplexed, model
    id = model name, least recently used evicted). The ingress sends each request with
    `multiplexed_model_id` = its model's name, so Serve routes it to a replica holding the model."""

    async def __init__(self, serve_args: list[str], models_per_replica: int) -> None:
        from triserve import logs
        from triserve.server import build_dataplane

        options = _multiplex_options(list(serve_args))
        logs.configure_runtime(options.log_level, options.log_format, options.log_file)
        self.dataplane = build_dataplane(options)
        await self.dataplane.manager.start([])
        self.loop, self.loop_thread = asyncio.get_running_loop(), threading.current_thread()
        self.lock = asyncio.Lock()  # one load or unload at a time (Serve's and describe()'s)
        self.resident: list[str] = []  # what Serve's cache holds, oldest first
        self.loads = self.evictions = 0
        self.known: dict[str, Snapshot] = {}  # each model's part of the snapshot, once it loaded here
        self.failed: set[str] = set()

        async def model(name: str) -> _Resident:  # a plain function: Serve keeps its cache on it
            return await self._load(name)

        self.model = serve.multiplexed(max_num_models_per_replica=models_per_replica)(model)

    async def _load(self, name: str) -> _Resident:
        async with self.lock:
            await self.dataplane.load(name)
            self.known[name] = take(self.dataplane)
            self.loads += 1
            self.resident.append(name)
        return _Resident(self, name)

    async def evict(self, name: str) -> None:
        async with self.lock:
            self.resident.remove(name)
            self.evictions += 1
            await self.dataplane.unload(name)

    async def describe(self) -> Snapshot:
        """Every model of the sources, as the ingress needs it: a model never loaded here is loaded
        once (and unloaded again, unless Serve's cache holds it) to learn its completed config."""
        for name in self.dataplane.names():
            if name in self.known or name in self.failed:
                continue
            async with self.lock:
                try:
                    await self.dataplane.load(name)
                    self.known[name] = take(self.dataplane)
                except ServerError:
                    self.failed.add(name)  # its status says why; not tried again
                if name not in self.resident and name in self.known:
                    await self.dataplane.unload(name)
        return merge(take(self.dataplane), self.known, tuple(sorted(self.failed)))

    def counts(self) -> dict[str, Any]:
        """This replica's multiplexing figures (for tests and operators)."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, "loads": self.loads,
                "evictions": self.evictions, "resident": list(self.resident)}

    async def _serving(self, name: str) -> None:
        model_id = serve.get_multiplexed_model_id() or name
        if model_id != name:
            raise ServerError(f"request for '{name}' routed as model '{model_id}'", Code.INTERNAL)
        await self.model(name)

    async def infer(self, name: str, version: int, request: InferRequest, split: bool) -> InferResponse | Failure:
        try:
            await self._serving(name)
            model = self.dataplane.model(name, version)
            return await self.dataplane.infer(model, request, split)  # queued before any eviction can run
        except ServerError as e:
            return Failure.of(e)

    async def predict(self, name: str, version: int, rows: list[Row]) -> list[Reply] | Failure:
        try:
            await self._serving(name)
            return await self.dataplane.predict(self.dataplane.model(name, version), rows)
        except ServerError as e:
            return Failure.of(e)


# -- gRPC: Serve's gRPC proxy calls the deployment method named like the RPC ---------------------
GRPC_SERVICER = "triserve.integrations.ray.grpc_servicer.add_GRPCInferenceServiceServicer_to_server"
TFSERVING_SERVICER = "triserve.integrations.ray.grpc_servicer.add_TFServingServicers_to_server"
TORCHSERVE_SERVICER = "triserve.integrations.ray.grpc_servicer.add_TorchServeInferenceServicer_to_server"
GRPC_SERVICERS = [GRPC_SERVICER, TFSERVING_SERVICER, TORCHSERVE_SERVICER]  # every gRPC service triserve serves through Serve


class _Aborted(grpc.aio.AbortError):
    """The RPC ended with the status set on Serve's context (Serve answers the client with it)."""


class _Context:
    """What V2GRPC uses of a grpc.aio context, over Serve's RayServegRPCContext."""

    def __init__(self, context: Any) -> None:
        self.context = context

    async def abort(self, code: Any, details: str) -> None:
        if self.context is not None:
            self.context.set_code(code)
            self.context.set_details(details)
        raise _Aborted(details)

    def invocation_metadata(self) -> Any:
        return self.context.invocation_metadata() if self.context is not None else ()

    def add_done_callback(self, callback: Any) -> None:
        callback(None)  # the answer is handed to Serve when the method returns


def grpc_methods() -> list[str]:
    """inference.GRPCInferenceService's unary RPCs (ModelStreamInfer, the one stream, is below)."""
    from tritonclient.grpc import service_pb2

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return [m.name for m in service.methods if not m.client_streaming and not m.server_streaming]


def _grpc_method(name: str) -> Any:
    async def method(self, request: Any, grpc_context: Any = None) -> Any:
        return await getattr(self.grpc, name)(request, _Context(grpc_context))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"inference.GRPCInferenceService/{name}, answered by protocols.kserve.grpc.V2GRPC"
    return method


class GRPCMethods:
    """The v2 gRPC RPCs as deployment methods (Serve's gRPC proxy dispatches by method name)."""


for _name in grpc_methods():
    setattr(GRPCMethods, _name, _grpc_method(_name))


async def _model_stream_infer(self, request_stream: Any, grpc_context: Any = None) -> Any:
    """inference.GRPCInferenceService/ModelStreamInfer (bidirectional; Serve hands the requests
    as a gRPCInputStream), answered by protocols.kserve.grpc.V2GRPC."""
    async for answer in self.grpc.ModelStreamInfer(request_stream, _Context(grpc_context)):
        yield answer


_model_stream_infer.__name__ = _model_stream_infer.__qualname__ = "ModelStreamInfer"
GRPCMethods.ModelStreamInfer = _model_stream_infer  # type: ignore[attr-defined]


def _protocol_method(name: str, handler: Any) -> Any:
    """A deployment method answering one TF Serving / TorchServe RPC with the protocol's own
    handler (it takes the request bytes: Serve's proxy does not parse them)."""
    if handler.unary_unary is not None:
        async def method(self, request: bytes, grpc_context: Any = None) -> Any:
            return await self.protocol_grpc[name].unary_unary(request, _Context(grpc_context))
    elif handler.unary_stream is not None:
        async def method(self, request: bytes, grpc_context: Any = None) -> Any:  # type: ignore[misc]
            async for answer in self.protocol_grpc[name].unary_stream(request, _Context(grpc_context)):
                yield answer
    else:
        async def method(self, request_stream: Any, grpc_context: Any = None) -> Any:  # type: ignore[misc]
            async for answer in self.protocol_grpc[name].stream_stream(request_stream, _Context(grpc_context)):
                yield answer
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{name} (TF Serving / TorchServe gRPC), answered by its protocol package's handler"
    return method


def _add_protocol_methods() -> None:
    from triserve.integrations.ray.grpc_servicer import protocol_handlers

    for name, handler in protocol_handlers(None).items():
        if hasattr(GRPCMethods, name):
            raise TypeError(f"gRPC method {name} is served twice")  # Serve's proxy dispatches by method name
        setattr(GRPCMethods, name, _protocol_method(name, handler))


_add_protocol_methods()


class HandleBackend:
    """remote.Backend over the model deployment's handle; `multiplexed`: each call names its
    model as the multiplexed model id (Serve routes it to a replica holding that model)."""

    def __init__(self, handle: Any, multiplexed: bool = False) -> None:
        self.handle = handle
        self.multiplexed = multiplexed

    def _for(self, name: str) -> Any:
        return self.handle.options(multiplexed_model_id=name) if self.multiplexed else self.handle

    async def infer(self, name: str, version: int, request: InferRequest, split: bool):
        return await self._for(name).infer.remote(name, version, request, split)

    async def predict(self, name: str, version: int, rows: list[Row]):
        return await self._for(name).predict.remote(name, version, rows)


@serve.deployment(name="TriserveIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class Ingress(GRPCMethods):
    """The HTTP routes of `triserve serve --single-port` (v2, TF Serving REST, TorchServe
    inference) and the v2 gRPC service, each served by its protocol package over a RemoteDataPlane."""

    async def __init__(self, models: Any, retries: int = 3, serve_args: list[str] | None = None,
                       multiplexed: bool = False) -> None:
        from triserve.integrations.ray.remote import RemoteDataPlane

        self.models = models
        self.options = _options(list(serve_args)) if serve_args else None  # the body limits
        snapshot = await models.describe.remote()
        self.dataplane = RemoteDataPlane(snapshot, HandleBackend(models, multiplexed), RETRYABLE, retries)
        from triserve.integrations.ray import grpc_servicer  # noqa: F401 (the messages' module names)
        from triserve.protocols.kserve.grpc import V2GRPC

        self.grpc = V2GRPC(self.dataplane)
        from triserve.integrations.ray.grpc_servicer import protocol_handlers

        self.protocol_grpc = protocol_handlers(self.dataplane, self.options)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            try:
                self.dataplane.update(await self.models.describe.remote())
            except Exception as e:  # a replica restarting: keep the last snapshot
                log.info("could not refresh the model snapshot: %s", type(e).__name__)

    def __serve_build_asgi_app__(self):
        from triserve.integrations.ray.routes import ingress_app

        return ingress_app(self.dataplane, self.options)

    def retried(self) -> int:
        """How many inference calls were repeated on another replica (for tests and operators)."""
        return self.dataplane.retried


def build(settings: Settings) -> Any:
    """The Serve application (bind()-ed, for serve.run or an app builder)."""
    if settings.multiplex:
        models = MultiplexedModels.options(**settings.model_options()).bind(list(settings.serve_args), settings.multiplex)
    else:
        models = Models.options(**settings.model_options()).bind(list(settings.serve_args))
    ingress_actor = {"num_cpus": 0, **({"resources": dict(settings.ingress_resources)} if settings.ingress_resources else {})}
    return Ingress.options(num_replicas=settings.ingress_replicas, ray_actor_options=ingress_actor).bind(
        models, settings.retries, list(settings.serve_args), bool(settings.multiplex))


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or int(low) > int(high) or int(high) < 1:
        raise ValueError(f"autoscale must be MIN:MAX replicas with MIN <= MAX and MAX >= 1, got {text!r}")
    return int(low), int(high)


def settings_from_args(args: dict[str, str]) -> Settings:
    """The app builder's arguments (`serve run triserve.integrations.ray:app key=value ...`, or a
    Serve config file's `args:`): model_repository (required unless serve_args names the models),
    serve_args (more `triserve serve` flags, one string), replicas, autoscale (MIN:MAX), num_cpus,
    num_gpus, max_ongoing_requests, target_ongoing_requests, retries, max_replicas_per_node, and
    autoscaling_config (more fields of Serve's autoscaling_config: an object, or JSON text), and
    ingress_resources (Ray resources the ingress needs, to pin it: {"node:__internal_head__": 0.001}
    keeps it beside a HeadOnly proxy), multiplex (N: each replica holds at most N models, loaded on
    demand, least recently used evicted; default off: every replica serves every model), and
    num_cpus=auto (each replica's CPUs from its models' instance_group, `cpu_per_instance` CPUs per
    CPU instance, default 0.5) and num_gpus=auto (GPUs from the KIND_GPU instances,
    `gpu_per_instance` of a GPU each, default 0.5): see integrations/ray/resources.py."""
    known = {"model_repository", "serve_args", "replicas", "autoscale", "num_cpus", "num_gpus",
             "max_ongoing_requests", "target_ongoing_requests", "retries", "max_replicas_per_node",
             "autoscaling_config", "ingress_resources", "multiplex", "cpu_per_instance", "gpu_per_instance"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    serve_args: list[str] = []
    repositories = args.get("model_repository", "")
    for repository in ([repositories] if isinstance(repositories, str) else list(repositories)):
        if repository:
            serve_args += ["--model-repository", str(repository)]
    serve_args += shlex.split(str(args.get("serve_args", "")))
    if not serve_args:
        raise ValueError("a model repository is required: model_repository=DIR (triserve ray: --model-repository DIR),"
                         " or serve_args naming the model sources")
    extra = args.get("autoscaling_config") or {}
    if isinstance(extra, str):
        import json

        try:
            extra = json.loads(extra)
        except ValueError:
            raise ValueError("autoscaling_config must be a JSON object of Serve autoscaling_config fields") from None
    if not isinstance(extra, dict):
        raise ValueError("autoscaling_config must be an object of Serve autoscaling_config fields")
    pinned = args.get("ingress_resources") or {}
    if isinstance(pinned, str):
        import json

        try:
            pinned = json.loads(pinned)
        except ValueError:
            raise ValueError("ingress_resources must be a JSON object of Ray resources") from None
    if not isinstance(pinned, dict):
        raise ValueError("ingress_resources must be an object of Ray resources")
    multiplex = int(args["multiplex"]) if args.get("multiplex") not in (None, "", 0, "0") else None
    if multiplex is not None and multiplex < 1:
        raise ValueError("multiplex must be the number of models one replica holds (at least 1)")
    num_cpus = _num_cpus(args, serve_args, multiplex)
    return Settings(
        serve_args=tuple(serve_args),
        replicas=int(args.get("replicas", 1)),
        autoscale=_autoscale(str(args["autoscale"])) if args.get("autoscale") else None,
        num_cpus=num_cpus,
        num_gpus=_num_gpus(args, serve_args, multiplex),
        max_ongoing_requests=int(args.get("max_ongoing_requests", 16)),
        target_ongoing_requests=float(args.get("target_ongoing_requests", 2)),
        retries=int(args.get("retries", 3)),
        max_replicas_per_node=int(args["max_replicas_per_node"]) if args.get("max_replicas_per_node") else None,
        autoscaling_extra=dict(extra),
        ingress_resources={str(k): float(v) for k, v in pinned.items()},
        multiplex=multiplex,
    )


def _given(args: dict[str, Any], key: str, unit: str, default: float) -> float | None:
    """args[key] as a number of `unit`s (CPU or GPU), or None for `auto`; `<unit>_per_instance`
    goes only with auto."""
    value = args.get(key, default)
    if str(value).strip().lower() == "auto":
        return None
    per_instance = f"{unit.lower()}_per_instance"
    if args.get(per_instance) is not None:
        raise ValueError(f"{per_instance} goes with {key}=auto")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number of {unit}s or 'auto', got {value!r}") from None
    if number < 0:
        raise ValueError(f"{key} must not be negative")
    return number


def _num_cpus(args: dict[str, Any], serve_args: list[str], multiplex: int | None) -> float:
    """num_cpus: a number, or `auto`: from the models' instance_group (resources.py's rule)."""
    given = _given(args, "num_cpus", "CPU", 1)
    if given is not None:
        return given
    from triserve.integrations.ray.resources import CPU_PER_INSTANCE, model_cpus, replica_cpus

    share = float(args["cpu_per_instance"]) if args.get("cpu_per_instance") is not None else CPU_PER_INSTANCE
    if share <= 0:
        raise ValueError("cpu_per_instance must be more than 0")
    configs = _startup_configs("num_cpus", serve_args)
    return replica_cpus([model_cpus(c, share) for c in configs.values()], multiplex, share)


def _num_gpus(args: dict[str, Any], serve_args: list[str], multiplex: int | None) -> float:
    """num_gpus: a number, or `auto`: from the models' KIND_GPU instances (resources.py's rule)."""
    given = _given(args, "num_gpus", "GPU", 0)
    if given is not None:
        return given
    from triserve.integrations.ray.resources import GPU_PER_INSTANCE, model_gpus, replica_gpus

    share = float(args["gpu_per_instance"]) if args.get("gpu_per_instance") is not None else GPU_PER_INSTANCE
    if not 0 < share <= 1:
        raise ValueError("gpu_per_instance must be more than 0 and at most 1")
    configs = _startup_configs("num_gpus", serve_args)
    return replica_gpus([model_gpus(c, share) for c in configs.values()], multiplex)


def _startup_configs(what: str, serve_args: list[str]) -> dict[str, Any]:
    """The startup models' configs, for `what`=auto; errors name `what`."""
    from triserve.integrations.ray.resources import repository_configs

    try:
        return dict(repository_configs(_options(list(serve_args))))
    except SystemExit:
        raise ValueError("serve_args are not valid `triserve serve` flags") from None
    except ServerError as e:
        raise ValueError(f"{what}=auto: {e.message}") from None
    except ValueError as e:
        raise ValueError(f"{what}=auto: {e}") from None
