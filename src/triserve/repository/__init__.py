"""Model sources (Triton repository, TorchServe archives, TF Serving config) turned into ModelSpecs."""

from triserve.repository.spec import ModelSpec

__all__ = ["ModelSpec"]
