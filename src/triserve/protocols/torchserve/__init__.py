"""TorchServe protocol: inference, management and metrics APIs, token authorization, request forms."""
