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


# -- TF Serving and TorchServe inference gRPC -------------------------------------------------
# The services are registered by their protocol packages' own register() (the same method names,
# kinds and (absent) deserializers as `triserve serve`'s ports): the handlers take the request
# bytes, so Serve's proxy hands the ingress the bytes and the ingress parses them with the
# protocol's own decoding (protocols.transport.grpc.add_service).


def add_TFServingServicers_to_server(servicer, server):  # noqa: N802 (Serve's servicer function signature)
    """tensorflow.serving.PredictionService and tensorflow.serving.ModelService."""
    from triserve.protocols.tfserving.grpc import TFServingGRPC

    TFServingGRPC(None).register(server)  # type: ignore[arg-type] (the proxy only needs the method table)


def add_TorchServeInferenceServicer_to_server(servicer, server):  # noqa: N802
    """org.pytorch.serve.grpc.inference.InferenceAPIsService (TorchServe's management API is
    Serve's through Ray: models are redeployed, not registered)."""
    from triserve.protocols.torchserve.grpc import TorchServeInferenceGRPC

    TorchServeInferenceGRPC(None).register(server)  # type: ignore[arg-type]


class Capture:
    """Stands in for a grpc.aio server in register(): keeps each method's handler by method name."""

    def __init__(self) -> None:
        self.handlers: dict = {}

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass  # add_service gives the same handlers to add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers) -> None:
        self.handlers.update(handlers)


def protocol_handlers(dataplane, options=None) -> dict:
    """Method name -> grpc.RpcMethodHandler of the TF Serving and TorchServe inference services,
    answered over `dataplane` (None: for the method table only)."""
    from triserve.options import GRPCOptions
    from triserve.protocols.tfserving.grpc import TFServingGRPC
    from triserve.protocols.torchserve.grpc import TorchServeInferenceGRPC

    capture = Capture()
    TFServingGRPC(dataplane, options.grpc if options is not None else GRPCOptions()).register(capture)
    TorchServeInferenceGRPC(dataplane).register(capture)
    return capture.handlers
