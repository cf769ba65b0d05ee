"""TF Serving's JSON tensors: request bodies to arrays (row and columnar), arrays to JSON, and
`examples` to tf.Example, with TF Serving's error messages."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from triserve.errors import Code, ServerError
from triserve.protocols.tfserving import json_codec as tfjson
from triserve.protos import tensorflow_pb2 as tf

FLOAT = np.dtype(np.float32)
INT = np.dtype(np.int32)
BYTES = np.dtype(np.object_)


def rejected(call, *args) -> str:
    """The INVALID_ARGUMENT message of a call that must fail."""
    with pytest.raises(ServerError) as e:
        call(*args)
    assert e.value.code == Code.INVALID_ARG
    return e.value.message


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


# -- parse --------------------------------------------------------------------------------
def test_parse_gives_the_request_object():
    assert tfjson.parse(b'{"instances": [[1, 2]], "signature_name": "serving_default"}') == {
        "instances": [[1, 2]],
        "signature_name": "serving_default",
    }


def test_parse_accepts_nan_and_infinity_tokens_as_tf_serving_does():
    data = tfjson.parse(b'{"inputs": [NaN, Infinity, -Infinity, 1.5]}')
    nan, inf, minus_inf, number = data["inputs"]
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf and number == 1.5


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_parse_rejects_an_empty_document(body):
    assert rejected(tfjson.parse, body) == "JSON Parse error: The document is empty"


@pytest.mark.parametrize("body", [b'{"instances": [[1.0,', b"\xff\xfe", b"{'single': 'quotes'}"])
def test_parse_rejects_malformed_json(body):
    assert rejected(tfjson.parse, body).startswith("JSON Parse error: ")


def test_parse_wants_an_object():
    assert rejected(tfjson.parse, b"[1, 2]") == "JSON Value: [1,2] Is not object"


# -- JSON values to arrays ----------------------------------------------------------------
@pytest.mark.parametrize(
    "value,dtype,expected",
    [
        ([[1, 2], [3, 4]], INT, np.array([[1, 2], [3, 4]], np.int32)),
        ([1, 2.5], FLOAT, np.array([1.0, 2.5], np.float32)),  # integers are numbers too
        ([[0.5]], np.dtype(np.float64), np.array([[0.5]])),
        ([True, False], np.dtype(np.bool_), np.array([True, False])),
        ([255, 0], np.dtype(np.uint8), np.array([255, 0], np.uint8)),
        ([2**63 - 1], np.dtype(np.int64), np.array([2**63 - 1], np.int64)),
        ([2**64 - 1], np.dtype(np.uint64), np.array([2**64 - 1], np.uint64)),
        ([2**24], FLOAT, np.array([2**24], np.float32)),  # the largest integer float32 holds exactly
        (7, INT, np.array(7, np.int32)),
        ([], INT, np.zeros(0, np.int32)),
    ],
)
def test_to_array_takes_the_inputs_dtype(value, dtype, expected):
    array = tfjson.to_array(value, dtype, "x")
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


def test_to_array_keeps_nan_and_infinity():
    array = tfjson.to_array([float("nan"), float("inf"), float("-inf")], FLOAT, "x")
    assert np.isnan(array[0]) and array[1] == np.inf and array[2] == -np.inf


@pytest.mark.parametrize(
    "value,dtype,message",
    [
        (["a"], FLOAT, "input 'x': JSON values of type String are not of expected type: float32"),
        ([True], INT, "input 'x': JSON values of type Bool are not of expected type: int32"),
        ([1.5], INT, "input 'x': JSON values of type Number are not of expected type: int32"),
        ([1], np.dtype(np.bool_), "input 'x': JSON values of type Number are not of expected type: bool"),
        ([1, "a"], INT, "input 'x': JSON values of type String are not of expected type: int32"),
        ([300], np.dtype(np.int8), "input 'x': a value is out of range for int8"),
        ([-1], np.dtype(np.uint8), "input 'x': a value is out of range for uint8"),
        ([2**63], np.dtype(np.int64), "input 'x': a value is out of range for int64"),
        ([2**24 + 1], FLOAT, "input 'x': Cannot convert JSON value to float without loss of precision."),
        ([[1], [2, 3]], INT, "input 'x': nested lists must be dense (every list at one level the same length)"),
        ([{"a": 1}], INT, "input 'x': JSON objects are only allowed as {\"b64\": ...} values of string inputs"),
        ({"a": 1}, FLOAT, "input 'x': JSON objects are only allowed as {\"b64\": ...} values of string inputs"),
    ],
)
def test_to_array_rejects_values_that_do_not_fit(value, dtype, message):
    assert rejected(tfjson.to_array, value, dtype, "x") == message


def test_string_inputs_take_text_as_utf8_and_b64_objects_as_bytes():
    array = tfjson.to_array([["héllo", b64(b"\xff\x00")], ["", b64(b"")]], BYTES, "s")
    assert array.shape == (2, 2) and array.dtype == np.object_
    assert array.tolist() == [["héllo".encode(), b"\xff\x00"], [b"", b""]]


def test_a_single_string_is_a_scalar():
    array = tfjson.to_array(b64(b"raw"), BYTES, "s")
    assert array.shape == () and array.item() == b"raw"


@pytest.mark.parametrize(
    "value,message",
    [
        ([1], "input 's': JSON Value: 1 is not of expected type: string"),
        ([{"b64": "not base64!"}], "input 's': Unable to base64 decode"),
        ([["a"], "b"], "input 's': JSON Value: \"b\" found at incorrect level: 2"),
        (["a", ["b"]], "input 's': nested lists must be dense (every list at one level the same length)"),
        ([["a"], ["b", "c"]], "input 's': nested lists must be dense (every list at one level the same length)"),
    ],
)
def test_string_inputs_reject_other_values(value, message):
    assert rejected(tfjson.to_array, value, BYTES, "s") == message


# -- row format ---------------------------------------------------------------------------
def test_instances_of_one_unnamed_input_stack_into_a_batch():
    arrays = tfjson.instances_to_arrays([[1, 2], [3, 4], [5, 6]], {"x": INT}, {"x"})
    assert list(arrays) == ["x"]
    np.testing.assert_array_equal(arrays["x"], np.array([[1, 2], [3, 4], [5, 6]], np.int32))


def test_instances_of_named_inputs_stack_each_input():
    dtypes = {"a": INT, "b": BYTES}
    arrays = tfjson.instances_to_arrays([{"a": [1], "b": "x"}, {"a": [2], "b": b64(b"y")}], dtypes, {"a", "b"})
    np.testing.assert_array_equal(arrays["a"], np.array([[1], [2]], np.int32))
    assert arrays["b"].tolist() == [b"x", b"y"]


def test_instances_of_b64_values_are_values_not_names():
    arrays = tfjson.instances_to_arrays([b64(b"\x01"), b64(b"\x02")], {"s": BYTES}, {"s"})
    assert arrays["s"].tolist() == [b"\x01", b"\x02"]


def test_optional_inputs_may_be_left_out_of_every_instance():
    arrays = tfjson.instances_to_arrays([{"a": 1}, {"a": 2}], {"a": INT, "b": INT}, {"a"})
    assert list(arrays) == ["a"]


@pytest.mark.parametrize(
    "instances,message",
    [
        ({"a": [1]}, "JSON Value: Excepting 'instances' to be an list/array"),
        ([], "JSON Value: No values in 'instances' array"),
        (
            [[1], [2]],
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per"
            " tensorinfo_map",
        ),
        ([{"a": 1, "b": 2}, [3]], "Expecting object but got list at item 1 of input list"),
        (
            [{"a": 1, "c": 2}],
            'Failed to process element: 0 of \'instances\' list. JSON object: {"a":1,"c":2} must only have keys: a,b',
        ),
        ([{"b": 1}], 'Failed to process element: 0 of \'instances\' list. JSON object: {"b":1} must only have keys: a,b'),
        (
            [{"a": [1, 2]}, {"a": [3]}],
            "Failed to process element: 1 of 'instances' list. Error: Expecting shape [2] but got: [1]",
        ),
        ([{"a": 1, "b": 2}, {"a": 3}], "every instance must have the same keys"),
    ],
)
def test_instances_errors_are_tf_servings(instances, message):
    assert rejected(tfjson.instances_to_arrays, instances, {"a": INT, "b": INT}, {"a"}) == message


def test_unnamed_instances_may_not_switch_to_objects():
    assert rejected(tfjson.instances_to_arrays, [[1], {"x": [2]}], {"x": INT}, {"x"}) == (
        "Expecting value/list but got object at item 1 of input list"
    )


# -- columnar format ----------------------------------------------------------------------
def test_inputs_of_one_unnamed_input_include_the_batch_dimension():
    arrays = tfjson.inputs_to_arrays([[1.0, 2.0]], {"x": FLOAT}, {"x"})
    np.testing.assert_array_equal(arrays["x"], np.array([[1.0, 2.0]], np.float32))


def test_named_inputs_ignore_keys_the_signature_does_not_name():
    arrays = tfjson.inputs_to_arrays({"a": [[1]], "b": [[2, 3]], "extra": "ignored"}, {"a": INT, "b": INT}, {"a", "b"})
    assert {k: v.tolist() for k, v in arrays.items()} == {"a": [[1]], "b": [[2, 3]]}  # shapes need not match


def test_named_inputs_need_every_required_one():
    assert rejected(tfjson.inputs_to_arrays, {"a": [1]}, {"a": INT, "b": INT}, {"a", "b"}) == (
        "Missing named input: b in 'inputs' object."
    )


def test_unnamed_inputs_need_a_single_input_signature():
    assert rejected(tfjson.inputs_to_arrays, [[1]], {"a": INT, "b": INT}, {"a", "b"}).startswith(
        "inputs is a plain value/list, but expecting an object"
    )


# -- arrays to JSON -----------------------------------------------------------------------
def test_predictions_of_one_output_are_its_rows():
    outputs = {"y": np.array([[1.0], [2.5]], np.float32)}
    assert tfjson.dumps(tfjson.predictions(outputs)) == b'{"predictions":[[1.0],[2.5]]}'  # whole floats keep ".0"
    assert tfjson.dumps(tfjson.columnar(outputs)) == b'{"outputs":[[1.0],[2.5]]}'


def test_predictions_of_several_outputs_are_one_object_per_row():
    outputs = {"y": np.array([[1.0], [2.0]], np.float32), "n": np.array([3, 4], np.int64)}
    assert tfjson.dumps(tfjson.predictions(outputs)) == b'{"predictions":[{"y":[1.0],"n":3},{"y":[2.0],"n":4}]}'
    assert tfjson.dumps(tfjson.columnar(outputs)) == b'{"outputs":{"y":[[1.0],[2.0]],"n":[3,4]}}'


def test_outputs_that_are_not_finite_are_written_as_nan_and_infinity_tokens():
    outputs = {"y": np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)}
    assert tfjson.dumps(tfjson.columnar(outputs)) == b'{"outputs":[NaN,Infinity,-Infinity,0.5]}'
    assert tfjson.dumps(tfjson.columnar({"y": np.array(-np.inf)})) == b'{"outputs":-Infinity}'
    assert tfjson.dumps(tfjson.columnar({"y": np.array([[np.nan, 2.0]], np.float16)})) == b'{"outputs":[[NaN,2.0]]}'


def test_string_outputs_are_text_unless_their_name_ends_in_bytes():
    text = np.empty((2, 1), np.object_)
    text[:] = [[b"ab"], [b"\xff"]]
    body = tfjson.dumps(tfjson.predictions({"text": text, "echo_bytes": text}))
    assert body == (
        b'{"predictions":[{"text":["ab"],"echo_bytes":[{"b64":"YWI="}]},'
        b'{"text":["\xef\xbf\xbd"],"echo_bytes":[{"b64":"/w=="}]}]}'  # undecodable text is replaced, as in TF Serving
    )


def test_scalars_and_booleans():
    assert tfjson.dumps(tfjson.columnar({"n": np.array(2, np.int32)})) == b'{"outputs":2}'
    assert tfjson.dumps(tfjson.columnar({"b": np.array([True, False])})) == b'{"outputs":[true,false]}'


@pytest.mark.parametrize(
    "outputs,message",
    [
        ({"y": np.ones(())}, "Tensor name: y has no shape information "),
        ({"y": np.zeros((0, 2))}, "Tensor name: y has invalid batch size: 0"),
        ({"y": np.zeros((2, 2)), "z": np.zeros(3)}, "Tensor name: z has inconsistent batch size: 3 expecting: 2"),
    ],
)
def test_predictions_need_one_batch_dimension(outputs, message):
    assert rejected(tfjson.predictions, outputs) == message


# -- classify / regress -------------------------------------------------------------------
def features(serialized: bytes) -> dict:
    example = tf.Example.FromString(serialized)
    result = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        result[name] = (kind, list(getattr(feature, kind).value))
    return result


def test_examples_become_tf_examples_under_their_context():
    serialized = tfjson.examples(
        {"context": {"lang": "en", "w": 0.5}, "examples": [{"x": 1.5, "n": [1, 2], "raw": b64(b"\x00")}, {"w": [2.0]}]},
        "classify",
    )
    first, second = map(features, serialized)
    assert first == {
        "lang": ("bytes_list", [b"en"]),
        "w": ("float_list", [0.5]),
        "x": ("float_list", [1.5]),
        "n": ("int64_list", [1, 2]),
        "raw": ("bytes_list", [b"\x00"]),
    }
    assert second == {"lang": ("bytes_list", [b"en"]), "w": ("float_list", [2.0])}  # the example's feature wins


def test_booleans_are_integer_features():
    (serialized,) = tfjson.examples({"examples": [{"flag": [True, False]}]}, "regress")
    assert features(serialized) == {"flag": ("int64_list", [1, 0])}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"instances": [1]}, "JSON Value: When method is classify, key 'examples' is expected and was not found"),
        ({"examples": {"x": 1}}, "JSON Value: Expecting 'examples' value to be an list/array"),
        ({"examples": []}, "JSON Value: 'examples' value is an empty array"),
        ({"examples": [[1.0]]}, "Example must be JSON object but got JSON list"),
        ({"context": 1, "examples": [{}]}, "Example must be JSON object but got JSON int"),
        ({"examples": [{"x": [1, 2.5]}]}, "Unexpected element type in feature: x expecting type: int64"),
        ({"examples": [{"x": [1.5, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
        ({"examples": [{"x": 2**64}]}, "Feature: x has uint64 element. Only int64 is supported."),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: NoneType"),
        ({"examples": [{"x": {"b64": "%%"}}]}, "Unable to base64 decode"),
    ],
)
def test_examples_errors(data, message):
    assert rejected(tfjson.examples, data, "classify") == message


@pytest.mark.parametrize(
    "value, rows, expected",
    [
        ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], True, {"x": [2, 3]}),
        ([{"x": [1.0, 2.0], "y": "a"}, {"x": [3.0, 4.0], "y": "b"}], True, {"x": [2, 2], "y": [2]}),
        ({"x": [[1.0, 2.0]], "z": 1}, False, {"x": [1, 2]}),
        ([[1.0]], False, {}),  # two inputs need names: the codec says so in its own words
        ([], True, {}),
    ],
    ids=["rows", "named rows", "named columns", "unnamed columns of two inputs", "no instances"],
)
def test_shapes_show_from_the_first_element_of_each_level(value, rows, expected):
    names = ["x"] if expected == {"x": [2, 3]} else ["x", "y"]
    assert tfjson.shapes(value, names, rows) == expected


def test_strings_for_numbers_are_refused_before_numpy_reads_them():
    message = rejected(tfjson.to_array, [["a"] * 3] * 100_000, FLOAT, "x")
    assert message == "input 'x': JSON values of type String are not of expected type: float32"


@pytest.mark.parametrize("dtype", [FLOAT, BYTES])
def test_values_nested_deeper_than_a_tensor_can_be_are_refused(dtype):
    value: object = "a" if dtype == BYTES else 1.0
    for _ in range(70):
        value = [value]
    assert "lists nested 70 deep; a tensor has at most 64 dimensions" in rejected(tfjson.to_array, value, dtype, "x")
