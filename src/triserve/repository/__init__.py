"""Model sources turned into core ModelSpecs: Triton repositories, TorchServe archives, a TF Serving
models.conf, and the repository API's uploads."""
