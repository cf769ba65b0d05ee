"""TF Serving gRPC API (--tfserving-grpc-port, 8500): tensorflow.serving.PredictionService
(Predict, Classify, Regress, MultiInference, GetModelMetadata) and tensorflow.serving.ModelService
(GetModelStatus, HandleReloadConfigRequest), wire-compatible with the tensorflow-serving-api stubs.

The messages are triserve's own compiled protos (protos/), which need no TensorFlow; the
services are registered under TF Serving's names, so the method paths are the same. Classify,
Regress and MultiInference requests are read with their tf.Examples left serialized (TF Serving's
SerializedInput): those bytes are what the signature is fed.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Awaitable, Callable

import grpc
import numpy as np
from google.protobuf import any_pb2


from triserve.core.dataplane import DataPlane
from triserve.core.types import RequestedOutput
from triserve.errors import ServerError, invalid
from triserve.options import GRPCOptions, ServerOptions
from triserve.protocols.tfserving import tensors as tfserving_tensors
from triserve.protocols.transport import offload
from triserve.protocols.transport.processes import WithPredecoded
from triserve.protocols.tfserving import predecode
from triserve.protocols.transport.grpc import INTERNAL_ERROR, GRPCFrontEnd, add_service, check_bytes_elements, read_whole, skimmed
from triserve.protocols.tfserving import servables as tfservables
from triserve.protocols.tfserving.servables import Servables, infer, signature, signature_def_map, tf_code
from triserve.protos import tensorflow_error_pb2 as tf_error
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis

log = logging.getLogger("triserve")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
# What clients unpack the metadata Any as: TF Serving's own message name, not our proto package's.
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
_STATUS = {code.value[0]: code for code in grpc.StatusCode}  # TF error codes are gRPC's numbers
# A predict request whose tensor values stay unread bytes until the inputs' datatypes and shapes
# passed the model's checks.
SKIMMED_PREDICT_REQUEST = skimmed(
    apis.PredictRequest,
    {tf.TensorProto.DESCRIPTOR.full_name: [f.name for f in tf.TensorProto.DESCRIPTOR.fields if f.number > 3]},
)
# Classify / Regress / MultiInference requests whose `input` stays bytes: parsed as a
# SerializedInput, its tf.Examples are the serialized bytes the client sent.
_INPUT_BYTES = {
    message.DESCRIPTOR.full_name: ["input"]
    for message in (apis.ClassificationRequest, apis.RegressionRequest, apis.MultiInferenceRequest)
}
SKIMMED_CLASSIFICATION_REQUEST = skimmed(apis.ClassificationRequest, _INPUT_BYTES)
SKIMMED_REGRESSION_REQUEST = skimmed(apis.RegressionRequest, _INPUT_BYTES)
SKIMMED_MULTI_INFERENCE_REQUEST = skimmed(apis.MultiInferenceRequest, _INPUT_BYTES)


def serialized_examples(input_bytes: bytes) -> list[bytes]:
    """An Input's tf.Examples, serialized; with a context, the context's bytes before each
    example's (protobuf merges them on parsing, as TF Serving feeds them)."""
    try:
        serialized = apis.SerializedInput.FromString(input_bytes)
    except Exception:
        raise invalid("the request's input is not a valid tensorflow.serving.Input message") from None
    kind = serialized.WhichOneof("kind")
    if kind == "example_list":
        return list(serialized.example_list.examples)
    if kind == "example_list_with_context":
        context = serialized.example_list_with_context.context
        return [context + example for example in serialized.example_list_with_context.examples]
    return []


def _version_choice(spec: apis.ModelSpec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class TFServingGRPC:
    def __init__(self, dataplane: DataPlane, options: GRPCOptions = GRPCOptions()) -> None:
        self.dataplane = dataplane
        self.servables = Servables(dataplane)
        self.max_message_bytes = options.max_message_bytes
        self.max_bytes_elements = options.max_bytes_elements

    # -- PredictionService --------------------------------------------------------------
    async def predict(self, request: apis.PredictRequest, context) -> apis.PredictResponse:
        spec = request.model_spec
        model = self.servables.model(spec.name, *_version_choice(spec))
        signature_name = signature(model, spec.signature_name)[0]
        # The request's values are still unread (SKIMMED_PREDICT_REQUEST): datatypes, shapes and
        # counts are checked first (a SavedModel's signature leaves shapes to TensorFlow).
        headers = {name: tfserving_tensors.header(name, tensor) for name, tensor in request.inputs.items()}
        if not model.signatures:
            model.check_inputs(headers, split=True)
        counts = [math.prod(shape) for datatype, shape in headers.values() if datatype == "BYTES"]
        check_bytes_elements(sum(counts), self.max_bytes_elements)
        inputs = await offload.off_loop(self._read_inputs, request)
        outputs = [RequestedOutput(name) for name in request.output_filter] or None
        model = self.servables.model(spec.name, *_version_choice(spec))  # again: a reload may have retired it
        result = await infer(self.dataplane, model, inputs, outputs, signature_name)
        response = apis.PredictResponse(model_spec=self.servables.model_spec(model, signature_name))
        for name, array in result.items():
            response.outputs[name].CopyFrom(tfserving_tensors.from_numpy(array))
        return response

    def _read_inputs(self, request: apis.PredictRequest) -> dict[str, np.ndarray]:
        if isinstance(request, WithPredecoded):  # a large request, read in a worker process
            return {name: request.predecoded[name].value() for name in request.inputs}
        whole = read_whole(request, apis.PredictRequest)
        return {name: tfserving_tensors.to_numpy(name, tensor, self.max_message_bytes) for name, tensor in whole.inputs.items()}

    async def _examples(self, request) -> list[bytes]:
        """The request's tf.Examples, serialized (one Python object each: capped like BYTES elements)."""
        examples = await offload.run(len(request.input), serialized_examples, request.input)
        check_bytes_elements(len(examples), self.max_bytes_elements)
        return examples

    async def classify(self, request, context) -> apis.ClassificationResponse:
        spec = request.model_spec
        self.servables.model(spec.name, *_version_choice(spec))  # an unknown model before a bad input
        serialized = await self._examples(request)
        model = self.servables.model(spec.name, *_version_choice(spec))
        result = await tfservables.classify(self.dataplane, model, spec.signature_name, serialized)
        name = spec.signature_name or tfservables.SERVING_DEFAULT
        return apis.ClassificationResponse(model_spec=self.servables.model_spec(model, name), result=result)

    async def regress(self, request, context) -> apis.RegressionResponse:
        spec = request.model_spec
        self.servables.model(spec.name, *_version_choice(spec))
        serialized = await self._examples(request)
        model = self.servables.model(spec.name, *_version_choice(spec))
        result = await tfservables.regress(self.dataplane, model, spec.signature_name, serialized)
        name = spec.signature_name or tfservables.SERVING_DEFAULT
        return apis.RegressionResponse(model_spec=self.servables.model_spec(model, name), result=result)

    async def multi_inference(self, request, context) -> apis.MultiInferenceResponse:
        """Classify and regress tasks on one model (TF Serving's checks: one model name, no
        signature twice, classify or regress methods), all over the same examples."""
        name = ""
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid("Found ModelSpec with an empty model name.")
            if name and task.model_spec.name != name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            name = task.model_spec.name
        spec = request.tasks[0].model_spec if request.tasks else apis.ModelSpec()
        self.servables.model(spec.name, *_version_choice(spec))
        serialized = await self._examples(request)
        model = self.servables.model(spec.name, *_version_choice(spec))
        tasks = [(task.model_spec.signature_name, task.method_name) for task in request.tasks]
        results = await tfservables.multi_inference(self.dataplane, model, tasks, serialized)
        response = apis.MultiInferenceResponse()
        for task, result in zip(request.tasks, results):
            signature_name = task.model_spec.signature_name or tfservables.SERVING_DEFAULT
            row = response.results.add(model_spec=self.servables.model_spec(model, signature_name))
            if isinstance(result, apis.ClassificationResult):
                row.classification_result.CopyFrom(result)
            else:
                row.regression_result.CopyFrom(result)
        return response

    async def get_model_metadata(
        self, request: apis.GetModelMetadataRequest, context
    ) -> apis.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        spec = request.model_spec
        model = self.servables.model(spec.name, *_version_choice(spec))
        response = apis.GetModelMetadataResponse(model_spec=self.servables.model_spec(model, signature_name=""))
        packed = any_pb2.Any(type_url=SIGNATURE_DEF_MAP_URL, value=signature_def_map(model).SerializeToString())
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    # -- ModelService -------------------------------------------------------------------
    async def get_model_status(self, request: apis.GetModelStatusRequest, context) -> apis.GetModelStatusResponse:
        spec = request.model_spec
        return self.servables.status(spec.name, *_version_choice(spec))

    async def reload_config(self, request: apis.ReloadConfigRequest, context) -> apis.ReloadConfigResponse:
        """Replace the models.conf config whole: models it leaves out unload, new ones load, changed ones reload."""
        await self.dataplane.reconfigure(request.config)
        return apis.ReloadConfigResponse(status=apis.StatusProto(error_code=tf_error.OK))

    # -- registration -------------------------------------------------------------------
    def register(self, grpc_server: grpc.aio.Server) -> list[str]:
        def unary(method: Callable[[Any, Any], Awaitable[Any]], request_type):
            async def handler(request, context):
                try:
                    return await method(request, context)
                except ServerError as e:
                    code = tf_code(e)
                    await context.abort(_STATUS.get(code, grpc.StatusCode.UNKNOWN), e.message)
                except grpc.aio.AbortError:
                    raise
                except Exception:  # a clean INTERNAL, never a dropped call
                    log.exception("unexpected error in a TF Serving gRPC call")
                    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)

            return grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString()
            )

        add_service(
            grpc_server,
            PREDICTION_SERVICE,
            {
                "Predict": unary(self.predict, SKIMMED_PREDICT_REQUEST),
                "Classify": unary(self.classify, SKIMMED_CLASSIFICATION_REQUEST),
                "Regress": unary(self.regress, SKIMMED_REGRESSION_REQUEST),
                "MultiInference": unary(self.multi_inference, SKIMMED_MULTI_INFERENCE_REQUEST),
                "GetModelMetadata": unary(self.get_model_metadata, apis.GetModelMetadataRequest),
            },
            large={"Predict": functools.partial(
                predecode.predict_request, max_message_bytes=self.max_message_bytes, max_bytes_elements=self.max_bytes_elements)},
        )
        add_service(
            grpc_server,
            MODEL_SERVICE,
            {
                "GetModelStatus": unary(self.get_model_status, apis.GetModelStatusRequest),
                "HandleReloadConfigRequest": unary(self.reload_config, apis.ReloadConfigRequest),
            },
        )
        return [PREDICTION_SERVICE, MODEL_SERVICE]


def frontend(dataplane: DataPlane, options: ServerOptions, port: int) -> GRPCFrontEnd:
    servicer = TFServingGRPC(dataplane, options.grpc)
    return GRPCFrontEnd(
        servicer.register, options.host, port, ready=dataplane.ready, max_message_bytes=options.grpc.max_message_bytes
    )
