"""What a model replica tells the ingress about its models, and how errors travel back.

The ingress decodes and checks requests with the protocol packages, which need each model's
configuration (names, datatypes, shapes, labels, signatures) and the states the repository
index reports. A replica sends that as a Snapshot; the ingress builds metadata-only models from
it (remote.RemoteModel). Nothing here imports Ray: the snapshot is plain picklable data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from triserve.core.dataplane import DataPlane
from triserve.core.model import Model
from triserve.core.status import UNAVAILABLE, IndexRow, ModelStatus
from triserve.errors import ServerError

# Models whose requests cannot be answered by any replica: state lives in one replica (sequence
# batching), or one request gets many responses (decoupled). Through Ray they are not served:
# they show UNAVAILABLE with this reason, never READY.
NOT_THROUGH_RAY = {
    "sequence": "sequence batching keeps per-sequence state in one replica; not served through Ray Serve",
    "decoupled": "decoupled (streaming) models are not served through Ray Serve yet",
}


@dataclass(frozen=True)
class ModelView:
    """One ready model version as the ingress needs it (no runtime, no weights)."""

    config: bytes  # the ModelConfig, serialized
    version: int
    labels: dict[str, list[str]]
    signatures: dict[str, Any]
    loaded_at: float
    instance_count: int


@dataclass(frozen=True)
class Snapshot:
    ready: bool  # strict: every model asked to load is ready
    control_mode: str
    names: tuple[str, ...]
    statuses: Mapping[str, ModelStatus]
    index: tuple[IndexRow, ...]
    aliases: Mapping[str, dict[str, int]]
    defaults: Mapping[str, int | None]
    models: Mapping[str, Mapping[int, ModelView]] = field(default_factory=dict)


def unsupported_reason(dataplane: DataPlane, model: Model) -> str:
    """Why the model cannot be served through Ray ("" when it can)."""
    if model.config.WhichOneof("scheduling_choice") == "sequence_batching":
        return NOT_THROUGH_RAY["sequence"]
    if dataplane.is_decoupled(model):
        return NOT_THROUGH_RAY["decoupled"]
    return ""


def take(dataplane: DataPlane) -> Snapshot:
    """The replica's models now (called on a model replica)."""
    names = tuple(dataplane.names())
    statuses: dict[str, ModelStatus] = {}
    models: dict[str, dict[int, ModelView]] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            statuses[name] = dataplane.status(name)
        except ServerError:
            continue
        views = {}
        for model in dataplane.versions(name):
            reason = unsupported_reason(dataplane, model)
            if reason:
                refused[name] = reason
                break
            views[model.version] = ModelView(
                model.config.SerializeToString(), model.version, dict(model.labels), dict(model.signatures),
                model.loaded_at, model.instance_count,
            )
        else:
            if views:
                models[name] = views
    for name, reason in refused.items():
        statuses[name] = ModelStatus(name, UNAVAILABLE, reason)
    index = tuple(
        IndexRow(row.name, row.version, UNAVAILABLE, refused[row.name]) if row.name in refused else row
        for row in dataplane.index()
    )
    ready = dataplane.ready(strict=True) and not refused
    return Snapshot(
        ready=ready,
        control_mode=dataplane.control_mode,
        names=names,
        statuses=statuses,
        index=index,
        aliases={n: dataplane.aliases(n) for n in names},
        defaults={n: dataplane.default_version(n) for n in names},
        models=models,
    )


@dataclass(frozen=True)
class Failure:
    """A ServerError raised on a replica, carried back as a value (an exception pickled by Ray
    would lose its code: ServerError's args are only its message)."""

    cls: type
    message: str
    state: dict[str, Any]

    @classmethod
    def of(cls, error: ServerError) -> "Failure":
        return cls(type(error), error.message, dict(vars(error)))

    def error(self) -> ServerError:
        error = self.cls.__new__(self.cls)
        Exception.__init__(error, self.message)
        vars(error).update(self.state)
        return error



def merge(current: Snapshot, known: Mapping[str, Snapshot], failed: tuple[str, ...] = ()) -> Snapshot:
    """A multiplexed replica's snapshot: a model that loaded on it once is servable (it loads on
    demand), so it shows as it was when loaded (READY, its config); any other model as `current`
    (the replica's data plane now) reports it. Ready: no model failed to load or is refused."""
    statuses = dict(current.statuses)
    aliases, defaults = dict(current.aliases), dict(current.defaults)
    models: dict[str, Mapping[int, ModelView]] = {}
    rows = [r for r in current.index if r.name not in known]
    refused = False
    for name, part in known.items():
        if name in part.statuses:
            statuses[name] = part.statuses[name]
        rows += [r for r in part.index if r.name == name]
        aliases[name], defaults[name] = part.aliases.get(name, {}), part.defaults.get(name)
        if name in part.models:
            models[name] = part.models[name]
        else:
            refused = True  # a sequence or decoupled model: UNAVAILABLE with the reason
    rows.sort(key=lambda r: (r.name, int(r.version) if r.version.isdigit() else -1))
    return Snapshot(
        ready=current.ready and not refused and not failed,
        control_mode=current.control_mode,
        names=current.names,
        statuses=statuses,
        index=tuple(rows),
        aliases=aliases,
        defaults=defaults,
        models=models,
    )
