"""The servicer function Serve's gRPC proxy registers (gRPCOptions.grpc_servicer_functions).

tritonclient's generated messages name their module `grpc_service_pb2` (and `model_config_pb2`),
which is not importable under that name, so Ray could not pickle them between the proxy and the
ingress. Importing this module (the proxy does, to register the servicer; the ingress does too)
makes those names resolve to tritonclient's modules.
"""

from __future__ import annotations

import sys

from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

sys.modules.setdefault("grpc_service_pb2", service_pb2)
sys.modules.setdefault("model_config_pb2", model_config_pb2)


def add_GRPCInferenceServiceServicer_to_server(servicer, server):  # noqa: N802 (the generated name)
    return service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
