"""What the core tells about a model: its state, why, and the state of each version."""

from __future__ import annotations

from dataclasses import dataclass, field

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNLOADED = "unloaded"  # the reason of a version that was unloaded on purpose


@dataclass(frozen=True)
class VersionStatus:
    state: str
    reason: str = ""


@dataclass(frozen=True)
class ModelStatus:
    name: str
    state: str  # "" when never loaded
    reason: str = ""
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    ready_versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class IndexRow:
    """One row of the repository index: a model (version "" when it has none listed)."""

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""
