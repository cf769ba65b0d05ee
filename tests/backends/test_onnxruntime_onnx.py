"""The ONNX Runtime backend on tiny real graphs: BYTES tensors reach ORT string tensors as the
client's text and come back as bytes, as Triton's onnxruntime backend passes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.inprocess import SIMPLE_IDENTITY_CONFIG, SIMPLE_STRING_CONFIG, simple_string_onnx, string_identity_onnx
from triserve.backends import EXECUTION, InstanceSettings
from triserve.backends import onnxruntime_onnx as ort_backend
from triserve.errors import Code, ServerError


def _load(tmp_path: Path, config_text: str, write) -> ort_backend.OnnxModel:
    config = text_format.Parse(config_text, mc.ModelConfig())
    write(tmp_path / "model.onnx")
    return ort_backend.load(config, tmp_path / "model.onnx", InstanceSettings())


@pytest.fixture
def simple_string(tmp_path) -> ort_backend.OnnxModel:
    return _load(tmp_path, SIMPLE_STRING_CONFIG, simple_string_onnx)


@pytest.fixture
def identity(tmp_path) -> ort_backend.OnnxModel:
    return _load(tmp_path, SIMPLE_IDENTITY_CONFIG, string_identity_onnx)


def _strings(rows: list[list]) -> np.ndarray:
    array = np.empty((len(rows), len(rows[0])), dtype=np.object_)
    array[:] = rows
    return array


def test_bytes_elements_are_cast_as_the_numbers_they_spell(simple_string):
    """Triton's simple_string graph (Cast string -> int32, add/sub, Cast back): the bytes `b"1"`
    reach ORT as the text "1", never as "b'1'" (which Cast refuses with `stoll`)."""
    a = _strings([[str(i).encode() for i in range(16)], [str(-i).encode() for i in range(16)]])
    b = _strings([[b"1"] * 16, [b"10"] * 16])
    out = simple_string.run({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    assert out["OUTPUT0"].dtype == np.object_ and out["OUTPUT0"].shape == (2, 16)
    assert out["OUTPUT0"].tolist() == [[str(i + 1).encode() for i in range(16)], [str(10 - i).encode() for i in range(16)]]
    assert out["OUTPUT1"].tolist() == [[str(i - 1).encode() for i in range(16)], [str(-i - 10).encode() for i in range(16)]]


def test_bytes_round_trip_unchanged_including_nul_and_multibyte_text(identity):
    rows = [[b"he\x00llo", "é€😀".encode(), b"", b"\x00\x01\x02\x03"], [b"b'1'", b" ", b"\n", b"x" * 1000]]
    out = identity.run({"INPUT0": _strings(rows)}, ["OUTPUT0"])["OUTPUT0"]
    assert out.tolist() == rows and all(isinstance(item, bytes) for item in out.ravel())


def test_text_items_are_taken_as_they_are(identity):
    out = identity.run({"INPUT0": _strings([["a", b"b"]])}, ["OUTPUT0"])["OUTPUT0"]
    assert out.tolist() == [[b"a", b"b"]]


def test_bytes_that_are_not_utf8_are_refused_not_altered(identity):
    with pytest.raises(ServerError) as e:
        identity.run({"INPUT0": _strings([[b"fine", b"\xc3\x28"]])}, ["OUTPUT0"])
    assert e.value.code == Code.INVALID_ARG
    assert "input 'INPUT0': element 1 is not UTF-8 text" in e.value.message


def test_numeric_inputs_are_untouched(tmp_path):
    from tests.inprocess import SIMPLE_CONFIG, simple_onnx

    model = _load(tmp_path, SIMPLE_CONFIG, simple_onnx)
    a = np.arange(16, dtype=np.int32)[None]
    out = model.run({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])
    assert out["OUTPUT0"].dtype == np.int32 and out["OUTPUT0"].tolist() == (2 * a).tolist()


def test_the_spinning_parameter_reaches_the_session_and_a_bad_value_is_refused(tmp_path):
    from tests.inprocess import SIMPLE_CONFIG, simple_onnx

    spin_off = SIMPLE_CONFIG + 'parameters { key: "session.intra_op.allow_spinning" value { string_value: "0" } }\n'
    model = _load(tmp_path / "off", spin_off, simple_onnx)
    assert model.session.get_session_options().get_session_config_entry(ort_backend.SPINNING) == "0"
    with pytest.raises(ServerError, match="must be 0 or 1, got 'yes'"):
        _load(tmp_path / "bad", spin_off.replace('string_value: "0"', 'string_value: "yes"'), simple_onnx)


def test_an_execution_alone_runs_on_the_wide_session_with_the_same_answer(tmp_path):
    from tests.inprocess import SIMPLE_CONFIG, simple_onnx

    config = text_format.Parse(SIMPLE_CONFIG, mc.ModelConfig())
    simple_onnx(tmp_path / "model.onnx")
    model = ort_backend.load(config, tmp_path / "model.onnx", InstanceSettings(threads=1, wide_threads=2))
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert model.wide_session.get_session_options().intra_op_num_threads == 2
    options = model.wide_session.get_session_options()
    assert options.get_session_config_entry(ort_backend.SPINNING_STOP) == "1"  # no spinning between runs
    a = np.arange(16, dtype=np.int32)[None]
    used = []
    for session in (model.session, model.wide_session):  # which one ran, seen through a spy
        real = session.run
        session.run = lambda names, feed, real=real, session=session: used.append(session) or real(names, feed)
    narrow = model.run({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])
    EXECUTION.alone = True
    try:
        wide = model.run({"INPUT0": a, "INPUT1": a}, ["OUTPUT0"])
    finally:
        EXECUTION.alone = False
    assert used == [model.session, model.wide_session]
    assert narrow["OUTPUT0"].tolist() == wide["OUTPUT0"].tolist() == (2 * a).tolist()


def test_the_instances_of_a_version_share_one_wide_session(tmp_path):
    from tests.inprocess import SIMPLE_CONFIG, simple_onnx

    config = text_format.Parse(SIMPLE_CONFIG, mc.ModelConfig())
    simple_onnx(tmp_path / "model.onnx")
    shared: dict = {}
    first, second = (ort_backend.load(config, tmp_path / "model.onnx",
                                      InstanceSettings(threads=1, wide_threads=2, shared=shared)) for _ in range(2))
    assert first.session is not second.session
    assert first.wide_session is second.wide_session is not None
    other = ort_backend.load(config, tmp_path / "model.onnx", InstanceSettings(threads=1, wide_threads=2))
    assert other.wide_session is not first.wide_session  # another version: its own


def test_an_explicit_thread_count_keeps_one_session(tmp_path):
    from tests.inprocess import SIMPLE_CONFIG, simple_onnx

    text = SIMPLE_CONFIG + 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    config = text_format.Parse(text, mc.ModelConfig())
    simple_onnx(tmp_path / "model.onnx")
    model = ort_backend.load(config, tmp_path / "model.onnx", InstanceSettings(threads=1, wide_threads=2))
    assert model.wide_session is None
