"""TF Serving protocol: REST and gRPC (PredictionService, ModelService), servables, JSON and tensors."""
