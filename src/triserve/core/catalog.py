"""Where models come from, as the core sees it: catalogs that list names and read specs.

Every model source (Triton repositories, TorchServe archives, a TF Serving models.conf, the
repository API's uploads) implements `Catalog`; the server hands them to the core. What only
some sources can do is a method with a do-nothing default, so the core never asks what a
catalog is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tritonclient.grpc import model_config_pb2 as mc

from triserve.core.spec import ModelSpec
from triserve.errors import Code, ServerError


class Catalog(Protocol):
    # > 0: the source watches itself; the server polls it this often (TF Serving's file system poll)
    poll_seconds: float = 0.0

    def names(self) -> list[str]:
        """The models to run."""
        ...

    def read(self, name: str, config: mc.ModelConfig | None = None) -> ModelSpec:
        """On a loader thread: the model's spec; `config` replaces the model's own."""
        ...

    def fingerprint(self, name: str) -> object:
        """Changes whenever what a load would read changes (poll mode compares them)."""
        return None

    def refresh(self) -> None:
        """Re-read the source's own configuration before a poll."""

    def aliases(self, name: str) -> dict[str, int]:
        """Version names -> version numbers (TF Serving labels, TorchServe version strings)."""
        return {}

    def default_version(self, name: str) -> int | None:
        """The version a request without one gets (None: the newest ready one)."""
        return None

    def replace(self, config: Any) -> None:
        """Take a new configuration whole (a TF Serving config reload)."""
        raise ServerError("this model source cannot be reconfigured", Code.UNSUPPORTED)


class Uploads(Protocol):
    """Model folders written from the repository API's `file:` parameters."""

    def write(self, name: str, config: mc.ModelConfig | None, files: dict[str, bytes]) -> ModelSpec: ...


@dataclass
class Settings:
    """How one registered archive version runs (TorchServe's per-model settings)."""

    batch_size: int = 1
    max_batch_delay_ms: int = 100
    workers: int | None = None  # None: the core's default
    response_timeout_s: int = 120  # TorchServe's response_timeout (described; not enforced)
    startup_timeout_s: int = 120  # TorchServe's startup_timeout: the longest a start may take


@dataclass
class Registration:
    """One archive registered as one version of a model."""

    name: str
    version: str  # TorchServe's version string ("1.0")
    url: str  # as given (describe's modelUrl)
    source: Path | None
    settings: Settings
    loaded_at_startup: bool = False
    manifest: dict = field(default_factory=dict)
    folder: Path | None = None  # the extracted archive
    error: str = ""  # why a startup archive could not even be read

    @property
    def model(self) -> dict:
        return self.manifest.get("model", {})


class Registry(Catalog, Protocol):
    """A catalog that models are registered into and removed from at run time (TorchServe archives)."""

    def registered(self) -> list[str]:
        """Every registered model, also those scaled to 0 workers."""
        ...

    def registrations(self, name: str) -> dict[int, Registration]: ...

    def prepare(self, url: str, model_name: str | None, params: dict[str, Any]) -> Registration:
        """On a worker thread: fetch, check and extract an archive. Nothing is registered yet."""
        ...

    def add(self, registration: Registration) -> int: ...

    def remove(self, name: str, version: str | None = None) -> list[Registration]: ...

    def discard(self, registrations: list[Registration]) -> None:
        """Delete the files of registrations that were removed (after their models unloaded)."""
        ...

    def workers(self, name: str) -> int | None: ...

    def set_workers(self, name: str, workers: int) -> None: ...

    def set_default(self, name: str, version: str) -> None: ...
