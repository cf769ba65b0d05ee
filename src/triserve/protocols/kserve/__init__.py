"""KServe v2 (Triton) protocol: HTTP/REST and gRPC, with Triton's extensions, and Triton's metrics."""
