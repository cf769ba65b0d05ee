"""triserve: one Python process serving Triton, TorchServe and TF Serving models."""

__version__ = "0.1.0"
