"""The ingress's data plane: the protocol packages' DataPlane interface over model replicas.

The protocol packages (kserve.rest.V2HTTP, tfserving.rest.TFServingREST, torchserve.inference)
take a DataPlane. In the ingress they get a RemoteDataPlane: queries are answered from the
replicas' Snapshot, models are metadata-only RemoteModels (so the adapters' own checks run
before a request leaves the ingress), and infer()/predict() go to a model replica through a
`Backend` (a Serve deployment handle in deployments.py). Inference that is idempotent (every
model served through Ray: sequence and decoupled models are not) is retried on another replica
when the one answering dies (`retryable` errors, Ray's ActorDiedError/ActorUnavailableError).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Protocol

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.dataplane import DataPlane, ModelNotFound, NotReady
from triserve.core.model import Model
from triserve.core.processors import Reply, Row
from triserve.core.stats import ModelStats
from triserve.core.status import IndexRow, ModelStatus
from triserve.core.types import InferRequest, InferResponse
from triserve.errors import Code, ServerError
from triserve.integrations.ray.snapshot import Failure, ModelView, Snapshot

log = logging.getLogger("triserve")

MANAGED_BY_SERVE = ("models are managed by Ray Serve in this mode: change the model repository and redeploy"
                    " the application (serve deploy, or triserve ray again)")


class Backend(Protocol):
    """Where inference runs: a model replica (any one of them)."""

    async def infer(self, name: str, version: int, request: InferRequest, split: bool) -> InferResponse | Failure: ...

    async def predict(self, name: str, version: int, rows: list[Row]) -> list[Reply] | Failure: ...


class RemoteModel(Model):
    """A model version known from a snapshot: its config, labels and signatures, no runtime.
    The adapters read its metadata and run its input checks; inference goes to a replica."""

    def __init__(self, view: ModelView) -> None:  # no scheduler, no instances
        config = mc.ModelConfig()
        config.ParseFromString(view.config)
        self.config = config
        self.name = config.name
        self.version = view.version
        self.version_str = str(view.version)
        self.labels = view.labels
        self.processor = None
        self.max_batch_size = config.max_batch_size
        self.inputs = {t.name: t for t in config.input}
        self.outputs = {t.name: t for t in config.output}
        self.output_names = list(self.outputs)
        from triserve import datatypes

        self._input_datatypes = {t.name: datatypes.name_of_config(t.data_type) for t in config.input}
        self._required = {t.name for t in config.input if not t.optional}
        self.stats = ModelStats(self.name, view.version)  # what this ingress forwarded
        self.loaded_at = view.loaded_at
        self.load_seconds = 0.0
        self._closers = [None] * view.instance_count
        self.signatures = dict(view.signatures)
        self.sequence_policy = None

    def infer(self, request: InferRequest) -> Awaitable[InferResponse]:
        raise ServerError("internal: a remote model runs on a model replica", Code.INTERNAL)

    async def close(self) -> None:
        return None


class RemoteDataPlane(DataPlane):
    """DataPlane's interface answered from a Snapshot, inference through a Backend."""

    def __init__(self, snapshot: Snapshot, backend: Backend, retryable: tuple[type[BaseException], ...] = (),
                 retries: int = 3) -> None:
        # No manager: DataPlane's own query helpers (version_number, resolve, stats_models,
        # check_version, is_decoupled) run over the methods below.
        self.strict_readiness = True
        self.registry = None
        self.configurable = None
        self.serving = True
        self._background = set()
        self.backend = backend
        self.retryable = retryable
        self.retries = retries  # extra tries on another replica; 0: none
        self.retried = 0  # how many tries were repeated (a replica died under them)
        self.snapshot: Snapshot = snapshot
        self._models: dict[str, dict[int, RemoteModel]] = {}
        self.update(snapshot)

    def update(self, snapshot: Snapshot) -> None:
        """Take a newer snapshot; models whose config did not change keep their objects (and stats)."""
        models = {}
        for name, views in snapshot.models.items():
            old = self._models.get(name, {})
            models[name] = {
                v: old[v] if v in old and old[v].config.SerializeToString() == view.config else RemoteModel(view)
                for v, view in views.items()
            }
        self._models = models
        self.snapshot = snapshot

    # -- health and queries -----------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self, strict: bool | None = None) -> bool:
        return self.serving and (self.snapshot.ready if (strict is None or strict) else True)

    @property
    def control_mode(self) -> str:
        return self.snapshot.control_mode

    def names(self) -> list[str]:
        return list(self.snapshot.names)

    def is_registered(self, name: str) -> bool:
        return False  # TorchServe's register API is not served through Ray (Serve config manages models)

    def default_version(self, name: str) -> int | None:
        return self.snapshot.defaults.get(name)

    def workers(self, name: str) -> int | None:
        return None

    def registrations(self, name: str):
        raise ModelNotFound(name)

    def status(self, name: str) -> ModelStatus:
        status = self.snapshot.statuses.get(name)
        if status is None:
            raise ModelNotFound(name)
        return status

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        rows = list(self.snapshot.index)
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self.snapshot.aliases.get(name, {}))

    def model(self, name: str, version: int | None = None) -> Model:
        versions = self._models.get(name)
        if not versions:
            status = self.snapshot.statuses.get(name)
            if status is None or not status.state:
                raise ModelNotFound(name)
            raise NotReady(name, None, status.reason)
        if version is None:
            default = self.snapshot.defaults.get(name)
            version = default if default is not None else max(versions)
        found = versions.get(version)
        if found is None:
            raise NotReady(name, version)
        return found

    def ready_model(self, name: str, version: int) -> Model | None:
        return self._models.get(name, {}).get(version)

    def versions(self, name: str) -> list[Model]:
        versions = self._models.get(name, {})
        return [versions[v] for v in sorted(versions)]

    def models(self) -> list[Model]:
        return [m for versions in self._models.values() for m in versions.values()]

    # -- lifecycle: Serve's ------------------------------------------------------------
    async def load(self, name: str, config: Any = None, files: Any = None) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNAVAILABLE)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNAVAILABLE)

    async def register(self, url: str, model_name: str | None, params: dict[str, Any], wait: bool = True):
        raise ServerError(MANAGED_BY_SERVE, Code.UNSUPPORTED)

    async def unregister(self, name: str, version: str | None = None) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNSUPPORTED)

    async def scale(self, name: str, workers: int, wait: bool = True) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNSUPPORTED)

    def set_default(self, name: str, version: str) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNSUPPORTED)

    async def reconfigure(self, config: Any) -> None:
        raise ServerError(MANAGED_BY_SERVE, Code.UNSUPPORTED)

    # -- inference ----------------------------------------------------------------------
    def infer(self, model: Model, request: InferRequest, split: bool = False) -> Awaitable[InferResponse]:
        request.trace = None  # traces are the ingress's; the replica's clock is another process's
        return self._retrying(lambda: self.backend.infer(model.name, model.version, request, split))

    def stream(self, model: Model, request: InferRequest):
        raise ServerError(f"model '{model.name}' is decoupled; decoupled models are not served through Ray Serve yet",
                          Code.UNSUPPORTED)

    async def predict(self, model: Model, rows: list[Row]) -> list[Reply]:
        return await self._retrying(lambda: self.backend.predict(model.name, model.version, rows))

    async def _retrying(self, call) -> Any:
        for attempt in range(self.retries + 1):
            try:
                answer = await call()
            except self.retryable as e:
                if attempt == self.retries:
                    log.warning("inference failed: the model replica died (%s)", type(e).__name__)
                    raise ServerError("the model replica serving the request died; try again", Code.UNAVAILABLE) from None
                self.retried += 1
                log.info("a model replica died under a request (%s): trying another", type(e).__name__)
                continue
            if isinstance(answer, Failure):
                raise answer.error()
            return answer
        raise AssertionError("unreachable")
