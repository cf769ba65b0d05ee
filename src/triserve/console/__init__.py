"""The web console at `/` on the v2 HTTP port: models, live traffic, a model's config, a photo
classified by every image classifier, and load/unload; each view is also a JSON endpoint."""

from triserve.console.api import Console
from triserve.console.sampler import Sampler

__all__ = ["Console", "Sampler"]
