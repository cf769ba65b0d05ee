from __future__ import annotations

from pathlib import Path

import pytest

from tests.protocols.torchserve.support import model_store


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """The model store of the TorchServe in-process tests: its archives are built once."""
    return model_store(tmp_path_factory.mktemp("torchserve_store"))
