"""Front-end plumbing every protocol shares: HTTP and gRPC servers, compression, request bodies."""
