"""What both TF Serving front ends share, over a real data plane: the model a request names
(latest, a version or a label), version status, signatures, datatypes, error codes and the
batch split."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inprocess import running_dataplane, simple_onnx
from tests.protocols.tfserving.models import BROKEN, CLASSIFIER, PLUS, REGRESSOR, STRINGS
from triserve.errors import Code, ServerError
from triserve.protocols.tfserving import servables
from triserve.protocols.tfserving.servables import Servables, infer, method_name, signature, signature_def_map
from triserve.protos import tensorflow_error_pb2 as tf_error
from triserve.protos import tensorflow_pb2 as tf
from triserve.protos import tfserving_apis_pb2 as apis
from triserve.protos import tfserving_config_pb2 as tfs
from triserve.repository.triton import TritonRepositories

AVAILABLE = apis.ModelVersionStatus.AVAILABLE
END = apis.ModelVersionStatus.END

PAIR_CONFIG = """
name: "pair"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1, 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ -1, 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1, 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ -1, 16 ] } ]
"""


QUEUED_CONFIG = """
name: "queued"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""


def error(call, *args) -> ServerError:
    with pytest.raises(ServerError) as e:
        call(*args)
    return e.value


def rows(response: apis.GetModelStatusResponse) -> list[tuple[int, int, int, str]]:
    return [(s.version, s.state, s.status.error_code, s.status.error_message) for s in response.model_version_status]


@pytest.fixture(scope="module")
async def dataplane(models_conf, triton_repository, tmp_path_factory):
    """The tiny ONNX models, `pair` (simple without batching), `queued` (simple with a queue of
    one) and the SavedModels; tests only read it."""
    pair = tmp_path_factory.mktemp("pair")
    for name, config in (("pair", PAIR_CONFIG), ("queued", QUEUED_CONFIG)):
        simple_onnx(pair / name / "1" / "model.onnx")
        (pair / name / "config.pbtxt").write_text(config)
    catalog = models_conf(PLUS, STRINGS, CLASSIFIER, REGRESSOR, BROKEN)
    async with running_dataplane([catalog, TritonRepositories([triton_repository, pair])]) as dataplane:
        yield dataplane


# -- finding the model --------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_request_gets_the_latest_version_a_version_or_a_labelled_one(dataplane):
    found = Servables(dataplane)
    assert found.model("plus").version == 2  # version 3 is on disk, but the policy names 1 and 2
    assert found.model("plus", 1).version == 1
    assert found.model("plus", label="stable").version == 1
    assert found.model("plus", label="canary").version == 2
    assert found.model("simple").version == 1


@pytest.mark.anyio
async def test_unknown_models_versions_and_labels(dataplane):
    found = Servables(dataplane)
    e = error(found.model, "nope")
    assert (e.code, e.message) == (Code.NOT_FOUND, "Servable not found for request: Latest(nope)")
    e = error(found.model, "plus", 3)
    assert (e.code, e.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(plus, 3)")
    e = error(found.model, "plus", None, "nightly")
    assert (e.code, e.message) == (Code.INVALID_ARG, "Unrecognized servable version label: nightly")
    # Triton models have no labels: every label is unknown
    assert error(found.model, "simple", None, "stable").message == "Unrecognized servable version label: stable"


@pytest.mark.anyio
async def test_a_model_that_failed_to_load_is_not_found_and_its_status_says_why(dataplane):
    found = Servables(dataplane)
    assert error(found.model, "broken").message == "Servable not found for request: Latest(broken)"
    ((version, state, code, message),) = rows(found.status("broken"))
    assert (version, state, code) == (1, END, tf_error.UNKNOWN)
    assert "saved_model.pb is not a SavedModel" in message


# -- version status -----------------------------------------------------------------------
@pytest.mark.anyio
async def test_status_lists_the_policys_versions_oldest_first(dataplane):
    found = Servables(dataplane)
    assert rows(found.status("plus")) == [(1, AVAILABLE, tf_error.OK, ""), (2, AVAILABLE, tf_error.OK, "")]
    assert rows(found.status("plus", 2)) == [(2, AVAILABLE, tf_error.OK, "")]
    assert rows(found.status("plus", label="stable")) == [(1, AVAILABLE, tf_error.OK, "")]
    assert rows(found.status("simple")) == [(1, AVAILABLE, tf_error.OK, "")]
    e = error(found.status, "plus", 3)
    assert (e.code, e.message) == (Code.NOT_FOUND, "Could not find version 3 of model plus")
    e = error(found.status, "nope")
    assert (e.code, e.message) == (Code.NOT_FOUND, "Could not find any versions of model nope")
    assert error(found.status, "plus", None, "nightly").code == Code.INVALID_ARG


@pytest.mark.anyio
async def test_a_version_a_reload_retired_has_ended_without_error(models_conf):
    catalog = models_conf(PLUS)
    async with running_dataplane([catalog], configurable=catalog) as dataplane:
        config = tfs.ModelServerConfig()
        model = config.model_config_list.config.add(name="plus", base_path=str(catalog.base_path("plus")))
        model.model_version_policy.specific.versions.extend([2, 3])
        await dataplane.reconfigure(config)
        assert rows(Servables(dataplane).status("plus")) == [
            (1, END, tf_error.OK, ""),
            (2, AVAILABLE, tf_error.OK, ""),
            (3, AVAILABLE, tf_error.OK, ""),
        ]


# -- signatures ---------------------------------------------------------------------------
def dims(info: tf.TensorInfo) -> list[int]:
    return [d.size for d in info.tensor_shape.dim]


@pytest.mark.anyio
async def test_a_triton_models_config_is_its_serving_default_signature(dataplane):
    (name, signature), = signature_def_map(dataplane.model("simple")).signature_def.items()
    assert name == "serving_default" and signature.method_name == "tensorflow/serving/predict"
    assert sorted(signature.inputs) == ["INPUT0", "INPUT1"] and sorted(signature.outputs) == ["OUTPUT0", "OUTPUT1"]
    assert signature.inputs["INPUT0"].name == "INPUT0"
    assert signature.inputs["INPUT0"].dtype == tf.DT_INT32
    assert dims(signature.inputs["INPUT0"]) == [-1, 16]  # the batch dimension leads
    pair = signature_def_map(dataplane.model("pair")).signature_def["serving_default"]
    assert dims(pair.outputs["OUTPUT1"]) == [-1, 16]  # no batching: the config's dims as they are
    doubler = signature_def_map(dataplane.model("doubler")).signature_def["serving_default"]
    assert doubler.inputs["x"].dtype == tf.DT_FLOAT and dims(doubler.inputs["x"]) == [-1, 3]


@pytest.mark.anyio
async def test_a_savedmodels_signatures_are_its_own(dataplane):
    """Graph tensor names, the SavedModel's shapes and method: TF2 exports every signature as predict."""
    plus = signature_def_map(dataplane.model("plus")).signature_def
    assert "serving_default" in plus
    x = plus["serving_default"].inputs["x"]
    assert x.name == "serving_default_x:0" and x.dtype == tf.DT_FLOAT and dims(x) == [-1, 1]
    assert plus["serving_default"].outputs["y"].name.endswith(":0")
    assert method_name(dataplane.model("classifier")) == "tensorflow/serving/predict"  # as TF2 writes it
    strings = signature_def_map(dataplane.model("strings")).signature_def["serving_default"]
    assert {name: info.dtype for name, info in strings.outputs.items()} == {
        "length": tf.DT_INT32,
        "upper": tf.DT_STRING,
        "echo_bytes": tf.DT_STRING,
    }


@pytest.mark.anyio
async def test_a_triton_models_method_is_read_from_its_layout(dataplane):
    assert method_name(dataplane.model("simple")) == "tensorflow/serving/predict"


@pytest.mark.anyio
async def test_model_spec_names_the_version_that_answered(dataplane):
    found = Servables(dataplane)
    spec = found.model_spec(dataplane.model("plus", 1))
    assert (spec.name, spec.version.value, spec.signature_name) == ("plus", 1, "serving_default")
    assert found.model_spec(dataplane.model("simple"), signature_name="").signature_name == ""


@pytest.mark.anyio
async def test_a_signature_is_found_by_name_and_empty_means_serving_default(dataplane):
    assert signature(dataplane.model("simple"), "")[0] == "serving_default"
    assert signature(dataplane.model("plus"), "serving_default")[0] == "serving_default"
    e = error(signature, dataplane.model("simple"), "predict_images")
    assert (e.code, e.message) == (Code.INVALID_ARG, 'Serving signature key "predict_images" not found.')


# -- datatypes and codes ------------------------------------------------------------------
@pytest.mark.parametrize(
    "datatype",
    ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"],
)
def test_every_v2_datatype_has_its_tensorflow_dtype(datatype):
    assert servables.tf_dtype(datatype) != tf.DT_INVALID
    assert servables.v2_datatype(servables.tf_dtype(datatype)) == datatype


def test_datatypes_without_a_tensorflow_dtype():
    assert servables.tf_dtype("NOPE") == tf.DT_INVALID
    assert error(servables.v2_datatype, tf.DT_COMPLEX128).message == "tensor dtype DT_COMPLEX128 is not supported"


@pytest.mark.parametrize(
    "code,tf_code,status",
    [
        (Code.INVALID_ARG, tf_error.INVALID_ARGUMENT, 400),
        (Code.NOT_FOUND, tf_error.NOT_FOUND, 404),
        (Code.UNAVAILABLE, tf_error.UNAVAILABLE, 503),
        (Code.INTERNAL, tf_error.INTERNAL, 500),
        (Code.UNSUPPORTED, tf_error.UNIMPLEMENTED, 501),
        (Code.ALREADY_EXISTS, tf_error.ALREADY_EXISTS, 409),
    ],
)
def test_error_codes_are_tensorflows_and_their_http_statuses(code, tf_code, status):
    assert servables.tf_code(ServerError("m", code)) == tf_code
    assert servables.HTTP_STATUS[tf_code] == status


@pytest.mark.anyio
async def test_a_full_queue_is_resource_exhausted_429_as_in_tf_serving(dataplane):
    """The core's queue-full error is UNAVAILABLE (Triton's 503); TF Serving answers RESOURCE_EXHAUSTED."""
    model = dataplane.model("queued")
    inputs = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
    first = servables.queue(dataplane, model, inputs)  # queued now: nothing has run it yet
    e = error(servables.queue, dataplane, model, inputs)
    assert (e.code, e.message) == (Code.UNAVAILABLE, "inference request for model 'queued' exceeds maximum queue size")
    assert servables.tf_code(e) == tf_error.RESOURCE_EXHAUSTED and servables.HTTP_STATUS[servables.tf_code(e)] == 429
    np.testing.assert_array_equal((await first).outputs["OUTPUT0"], inputs["INPUT0"] * 2)


def test_servables_are_named_as_tf_serving_names_them():
    assert servables.servable("m", None) == "Latest(m)"
    assert servables.servable("m", 7) == "Specific(m, 7)"


# -- inference ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_batch_above_max_batch_size_is_split_and_joined_in_order(dataplane):
    model = dataplane.model("simple")
    assert model.max_batch_size == 8
    before = model.stats.success.count, model.stats.inference_count
    first = np.repeat(np.arange(20, dtype=np.int32)[:, None], 16, axis=1)
    outputs = await infer(dataplane, model, {"INPUT0": first, "INPUT1": np.ones_like(first)})
    np.testing.assert_array_equal(outputs["OUTPUT0"], first + 1)
    np.testing.assert_array_equal(outputs["OUTPUT1"], first - 1)
    after = model.stats.success.count, model.stats.inference_count
    assert (after[0] - before[0], after[1] - before[1]) == (3, 20)  # requests of 8, 8 and 4


@pytest.mark.anyio
async def test_a_batch_the_model_takes_whole_is_not_split(dataplane):
    model = dataplane.model("plus", 1)
    before = model.stats.success.count
    outputs = await infer(dataplane, model, {"x": np.array([[1.0], [2.0]], np.float32)})
    np.testing.assert_array_equal(outputs["y"], [[2.0], [3.0]])
    assert model.stats.success.count - before == 1
