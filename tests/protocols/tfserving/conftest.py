"""Models for the TF Serving in-process tests: tiny SavedModels written once per session (the one
TensorFlow import), models.conf catalogs over them, and the tiny ONNX repository."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.inprocess import tiny_repository
from triserve.repository.tfserving import TFServingModels


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-scoped, so a module's shared data plane and its tests run in one event loop."""
    return "asyncio"


@pytest.fixture(scope="session")
def savedmodels(tmp_path_factory) -> Path:
    """Base paths: plus/{1,2,3}, strings/1, classifier/1, regressor/1 (tests/savedmodels.py) and
    broken/1, whose saved_model.pb is not a SavedModel."""
    from tests.savedmodels import adder, classifier, regressor, strings

    root = tmp_path_factory.mktemp("savedmodels")
    for version in (1, 2, 3):
        (root / "plus").mkdir(exist_ok=True)
        adder(root / "plus" / str(version), float(version))
    for name, make in (("strings", strings), ("classifier", classifier), ("regressor", regressor)):
        (root / name).mkdir()
        make(root / name / "1")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"\x0a\xff not a protobuf")
    return root


@pytest.fixture(scope="session")
def models_conf(savedmodels: Path, tmp_path_factory) -> Callable[..., TFServingModels]:
    """`models_conf(PLUS, STRINGS, ...)` (models.py): the catalog of a new models.conf listing those models;
    its relative base paths ('plus', 'strings', ...) are the session's SavedModels."""

    def catalog(*configs: str) -> TFServingModels:
        folder = tmp_path_factory.mktemp("tfserving")
        for model in savedmodels.iterdir():
            (folder / model.name).symlink_to(model, target_is_directory=True)
        conf = folder / "models.conf"
        conf.write_text("model_config_list {\n" + "\n".join(configs) + "\n}\n")
        return TFServingModels(config_file=conf)

    return catalog


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory) -> Path:
    """The tiny ONNX repository (`simple`, `scores`, `doubler`); tests only read it."""
    return tiny_repository(tmp_path_factory.mktemp("triton"))



@pytest.fixture(scope="session")
def testdata_server(start_server, tmp_path_factory):
    """A server of TF Serving's own test models from a models.conf (half_plus_two, half_plus_three,
    saved_model_half_plus_two_2_versions on the default policy: version 124), on both TF Serving ports."""
    from tests.protocols.tfserving.models import HALF_PLUS_THREE, HALF_PLUS_TWO, TESTDATA

    two_versions = f"config {{ name: 'saved_model_half_plus_two_2_versions' base_path: '{TESTDATA / 'saved_model_half_plus_two_2_versions'}' }}"
    conf = tmp_path_factory.mktemp("testdata") / "models.conf"
    conf.write_text("model_config_list {\n" + "\n".join((HALF_PLUS_TWO, HALF_PLUS_THREE, two_versions)) + "\n}\n")
    return start_server("--model-config-file", conf, frontends=("tfserving_rest", "tfserving_grpc"))
