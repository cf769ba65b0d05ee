"""TF Serving model sources: models.conf parsing, version folders and policies, labels, polling
for new versions while clients keep getting answers, and startup errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from triserve.errors import ServerError
from triserve.repository.tfserving import TFServingModels

CONF = """
model_config_list {
  config {
    name: 'two'
    base_path: 'models/two'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config { name: 'newest' base_path: 'models/newest' }
  config { name: 'both' base_path: 'models/newest' model_version_policy { latest { num_versions: 2 } } }
  config { name: 'every' base_path: 'models/newest' model_version_policy { all {} } }
}
"""


def folders(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir(parents=True)
        (base / name / "saved_model.pb").write_bytes(b"")


@pytest.fixture
def conf(tmp_path) -> Path:
    folders(tmp_path / "models" / "two", "1", "2", "3")
    folders(tmp_path / "models" / "newest", "1", "007", "12", "latest", ".tmp")
    path = tmp_path / "conf" / "models.conf"
    path.parent.mkdir()
    path.write_text(CONF.replace("'models/", "'../models/"))
    return path


def test_models_versions_and_labels(conf):
    catalog = TFServingModels(config_file=conf)
    assert catalog.names() == ["two", "newest", "both", "every"]
    two = catalog.read("two")
    # relative base_path resolves against the config file's folder
    assert two.path == conf.parent / "../models/two"
    assert sorted(two.versions) == [1, 2]
    assert two.versions[1] == two.path / "1"
    assert two.config.platform == "tensorflow_savedmodel"
    assert Path(two.versions[2] / two.config.default_model_filename) == two.versions[2]  # the folder is the model
    assert catalog.aliases("two") == {"stable": 1, "canary": 2}
    assert catalog.aliases("newest") == {}


def test_version_policies_over_numeric_folders(conf):
    catalog = TFServingModels(config_file=conf)
    # `007` is version 7 (as TF Serving parses folder names); non-numeric folders are ignored
    assert sorted(catalog.read("newest").versions) == [12]  # default policy: latest 1
    assert sorted(catalog.read("both").versions) == [7, 12]
    assert sorted(catalog.read("every").versions) == [1, 7, 12]


def test_one_model_from_a_base_path(tmp_path):
    folders(tmp_path / "m", "3", "5")
    catalog = TFServingModels(model_name="mine", base_path=tmp_path / "m")
    assert catalog.names() == ["mine"]
    assert sorted(catalog.read("mine").versions) == [5]
    assert TFServingModels(base_path=tmp_path / "m").names() == ["default"]


@pytest.mark.parametrize(
    "text,words",
    [
        ("model_config_list { config { name: 'a' base_path: '/x' version_policy: 1 } }", ["models.conf", "version_policy"]),
        ("model_config_list { config { name: 'a' base_path: '/x' } ", ["models.conf"]),
        ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }", ["multiple times"]),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }", ["onnx", "tensorflow"]),
        ("model_config_list { config { name: 'a' } }", ["base_path"]),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, text, words):
    path = tmp_path / "models.conf"
    path.write_text(text)
    with pytest.raises(ServerError) as e:
        TFServingModels(config_file=path)
    assert all(w in e.value.message for w in words), e.value.message


def test_no_version_or_no_base_path(tmp_path):
    (tmp_path / "empty").mkdir()
    catalog = TFServingModels(model_name="m", base_path=tmp_path / "empty")
    with pytest.raises(ServerError, match="no version"):
        catalog.read("m")
    with pytest.raises(ServerError, match="not a directory"):
        TFServingModels(model_name="m", base_path=tmp_path / "missing").read("m")


def test_config_file_is_read_again_and_a_broken_one_is_ignored(conf):
    catalog = TFServingModels(config_file=conf, config_poll_seconds=0.01)
    conf.write_text("model_config_list { config { name: 'only' base_path: '../models/two' } }")
    time.sleep(0.02)
    catalog.refresh()
    assert catalog.names() == ["only"]
    conf.write_text("model_config_list { config { name: ")
    time.sleep(0.02)
    catalog.refresh()
    assert catalog.names() == ["only"]


def test_fingerprint_changes_with_version_folders(conf):
    catalog = TFServingModels(config_file=conf)
    before = catalog.fingerprint("newest")
    assert catalog.fingerprint("newest") == before
    folders(conf.parent.parent / "models" / "newest", "13")
    assert catalog.fingerprint("newest") != before
    assert catalog.fingerprint("two") == catalog.fingerprint("two")


def wait_for(condition, timeout: float = 120) -> None:
    """Poll `condition` until it holds; the deadline only bounds how long a broken server is waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout}s"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_broken_models_conf_stops_the_server_with_a_message(start_server, tmp_path):
    conf = tmp_path / "models.conf"
    conf.write_text("model_config_list { config { name: 'a' basepath: '/x' } }")
    server = start_server("--model-config-file", conf, wait=False, frontends=("tfserving_rest",))
    assert server.process.wait(120) == 1
    assert "basepath" in server.log() and str(conf) in server.log() and "Traceback" not in server.log()


@pytest.mark.slow
def test_a_new_version_is_picked_up_and_the_old_one_retires_while_clients_get_answers(start_server, tmp_path):
    from tests.savedmodels import adder

    base = tmp_path / "adder"
    base.mkdir()
    adder(base / "1", 1.0)
    poll = 0.5
    server = start_server(
        "--model-base-path", base, "--model-name", "adder", "--file-system-poll-wait-seconds", str(poll),
        frontends=("http", "tfserving_rest"),
    )
    url = f"http://127.0.0.1:{server.ports['tfserving_rest']}"
    answers: list[list[tuple[int, float | None]]] = [[], []]  # per client, in order
    stop = threading.Event()

    def client(mine: list) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/models/adder:predict", json={"instances": [[1.0]]})
                mine.append((r.status_code, r.json()["predictions"][0][0] if r.status_code == 200 else None))

    threads = [threading.Thread(target=client, args=(mine,)) for mine in answers]
    for t in threads:
        t.start()

    def answered(counts: list[int]) -> bool:
        return all(len(mine) > count for mine, count in zip(answers, counts))

    def states() -> list[tuple[str, str]]:
        status = httpx.get(f"{url}/v1/models/adder").json()["model_version_status"]
        return [(s["version"], s["state"]) for s in status]

    try:
        wait_for(lambda: answered([0, 0]))  # both clients have answers of version 1
        adder(base / "2", 2.0)  # written aside, then renamed in: the folder appears complete
        wait_for(lambda: states() == [("1", "END"), ("2", "AVAILABLE")])  # a poll found it; version 1 retired
        # The second request each client completes from now on started after the swap: version 2 answers it.
        counts = [len(mine) for mine in answers]
        wait_for(lambda: answered([count + 1 for count in counts]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    for mine in answers:
        assert all(code == 200 for code, _ in mine), {code for code, _ in mine}
        values = [v for _, v in mine]
        switch = values.index(3.0)
        assert switch > 0 and set(values[:switch]) == {2.0} and set(values[switch:]) == {3.0}  # v1, then only v2
    r = httpx.post(f"{url}/v1/models/adder/versions/1:predict", json={"instances": [[1.0]]})
    assert r.status_code == 404 and "Specific(adder, 1)" in r.json()["error"]
    assert "loaded model 'adder' version 2" in server.log()
