"""TorchServe archives: reading what torch-model-archiver writes, and refusing what is unsafe."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.protocols.torchserve.support import tar_bomb, zip_bomb
from tests.torchserve_archives import (
    escape_to,
    manifest,
    marker_handler,
    tar_archive,
    torch_model_archiver,
    zip_archive,
)
from triserve.cli import parser
from triserve.core import processors
from triserve.errors import Code, ServerError
from triserve.options import ArchiveOptions, from_args
from triserve.repository.mar import MarCatalog
from triserve.repository.mar_extract import Archive, Limits
from triserve.repository.mar_fetch import download, in_store
from triserve.ts_config import apply, parse_properties

MODEL = b"not really a model"


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(MODEL)
    (folder / "index_to_name.json").write_text('{"0": ["n01440764", "tench"], "1": "goldfish"}')
    return folder


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz", "no-archive"])
def test_every_torch_model_archiver_format_opens_and_extracts(tmp_path, inputs, fmt):
    path = torch_model_archiver(tmp_path / "store", "fish", "2.0", "image_classifier",
                                serialized=inputs / "model.onnx", extra=[inputs / "index_to_name.json"], fmt=fmt)
    with Archive(path) as archive:
        assert archive.manifest["model"] == {"modelName": "fish", "serializedFile": "model.onnx",
                                             "handler": "image_classifier", "modelVersion": "2.0"}
        assert archive.files == {"model.onnx", "index_to_name.json", "MAR-INF/MANIFEST.json"}
        archive.extract(tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == MODEL


def test_catalog_describes_an_onnx_archive(tmp_path, inputs):
    store = tmp_path / "store"
    torch_model_archiver(store, "fish", "2.0", "image_classifier", serialized=inputs / "model.onnx",
                         extra=[inputs / "index_to_name.json"])
    (store / "fish-config.yaml").write_text("batchSize: 4\nmaxBatchDelay: 7\nminWorkers: 3\n")
    torch_model_archiver(store, "fish_yaml", "1.0", "image_classifier", serialized=inputs / "model.onnx",
                         config_file=store / "fish-config.yaml")
    catalog = MarCatalog(store)
    catalog.add_startup("all")
    assert catalog.names() == ["fish", "fish_yaml"]
    spec = catalog.read("fish")
    assert spec.config.platform == "onnxruntime_onnx"
    assert spec.config.default_model_filename == "model.onnx"
    assert spec.config.max_batch_size == 1 and spec.config.dynamic_batching.max_queue_delay_microseconds == 100_000
    assert catalog.aliases("fish") == {"2.0": 1} and catalog.default_version("fish") == 1
    assert spec.processors[1].handler == "image_classifier"
    classifier = processors.build(spec.processors[1])
    assert classifier.label(0) == "tench"  # a list value means its last element
    assert classifier.label(1) == "goldfish"
    yaml_spec = catalog.read("fish_yaml")
    assert yaml_spec.config.max_batch_size == 4
    assert yaml_spec.config.dynamic_batching.max_queue_delay_microseconds == 7000
    assert yaml_spec.config.instance_group[0].count == 3
    with pytest.raises(ServerError) as e:
        catalog.resolve("fish", "9.9")
    assert e.value.message == "Model version: 9.9 does not exist for model: fish"


def _refused(path: Path, words: str, tmp_path: Path, limits: Limits = Limits()) -> str:
    """The message refusing `path`, which left nothing behind."""
    out = tmp_path / "extracted"
    with pytest.raises(ServerError) as e:
        with Archive(path, limits) as archive:
            archive.extract(out)
    assert e.value.code == Code.INVALID_ARG and words in e.value.message, e.value.message
    assert not out.exists()
    return e.value.message


@pytest.mark.parametrize("writer", [zip_archive, tar_archive])
def test_slip_absolute_and_link_entries_refuse_the_whole_archive(tmp_path, writer):
    victim = tmp_path / "victim" / "pwned.txt"
    good = {"MAR-INF/MANIFEST.json": manifest("m", serializedFile="model.onnx"), "model.onnx": MODEL}
    suffix = ".mar" if writer is zip_archive else ".tar.gz"
    _refused(writer(tmp_path / f"slip{suffix}", {**good, escape_to(victim): b"x"}), "'..'", tmp_path)
    _refused(writer(tmp_path / f"abs{suffix}", {**good, str(victim): b"x"}), "absolute", tmp_path)
    _refused(writer(tmp_path / f"link{suffix}", good, symlinks={"index_to_name.json": "/etc/passwd"}), "link", tmp_path)
    assert not victim.exists() and not victim.parent.exists()


def test_folder_with_a_link_is_refused(tmp_path):
    folder = tmp_path / "m"
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_bytes(manifest("m", serializedFile="model.onnx"))
    (folder / "model.onnx").symlink_to("/etc/passwd")
    _refused(folder, "symbolic link", tmp_path)


def test_manifest_file_fields_must_be_plain_names_in_the_archive(tmp_path):
    catalog = MarCatalog(tmp_path)
    zip_archive(tmp_path / "cfg.mar", {"MAR-INF/MANIFEST.json": manifest("cfg", serializedFile="model.onnx",
                                                                          configFile="../../etc/passwd"),
                                       "model.onnx": MODEL})
    with pytest.raises(ServerError) as e:
        catalog.prepare("cfg.mar", None, {})
    assert "plain file name" in e.value.message


def test_custom_handler_is_neither_extracted_nor_run_without_the_flag(tmp_path):
    marker = tmp_path / "executed"
    handler = marker_handler(tmp_path / "evil.py", marker, "def handle(data, context):\n    return data\n")
    store = tmp_path / "store"
    torch_model_archiver(store, "evil", "1.0", str(handler), extra=[])
    catalog = MarCatalog(store)
    with pytest.raises(ServerError) as e:
        catalog.prepare("evil.mar", None, {})
    assert "--allow-custom-handlers" in e.value.message
    assert not marker.exists()
    assert list(catalog._root.iterdir()) == []  # nothing extracted
    catalog.add_startup("evil.mar")  # at startup: the model fails to load with the reason
    with pytest.raises(ServerError) as e:
        catalog.read("evil")
    assert "--allow-custom-handlers" in e.value.message and not marker.exists()


def test_registration_urls_stay_in_the_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "outside.mar").write_bytes(b"x")
    (store / "link.mar").symlink_to(tmp_path / "outside.mar")
    for url in ("../outside.mar", str(tmp_path / "outside.mar"), "sub/x.mar", "..", ".hidden.mar", "link.mar"):
        with pytest.raises(ServerError):
            in_store(store, url)
    with pytest.raises(ServerError) as e:
        download("http://example.com/m.mar", [], tmp_path)
    assert "disabled" in e.value.message
    for url in ("https://evil.example.com/m.mar", "http://example.com:8080/m.mar", "file:///etc/passwd",
                "http://user@example.com/m.mar"):
        with pytest.raises(ServerError):
            download(url, ["example.com"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.mar", "store"]


def test_config_properties(tmp_path):
    os.environ["TRISERVE_TEST_STORE"] = str(tmp_path)
    text = (
        "# comment\ninference_address=http://0.0.0.0:9080\nmanagement_address=http://127.0.0.1:9081\n"
        "model_store=$$TRISERVE_TEST_STORE$$\nload_models=a=a.mar,b.mar\ndefault_workers_per_model=3\n"
        'models={"a": {"1.0": {"batchSize": 8, \\\n "maxBatchDelay": 50}}}\nenable_model_api=true\n'
    )
    assert parse_properties(text)["models"] == '{"a": {"1.0": {"batchSize": 8, "maxBatchDelay": 50}}}'
    path = tmp_path / "config.properties"
    path.write_text(text)
    extra: dict = {"models": []}
    ports = {"torchserve_inference": 8080, "torchserve_management": 7000}
    defaults = {"torchserve_inference": 8080, "torchserve_management": 8081}
    apply(path, extra, ports, defaults, "127.0.0.1", "127.0.0.1")
    assert ports == {"torchserve_inference": 9080, "torchserve_management": 7000}  # the command line wins
    assert extra["torchserve_hosts"]["torchserve_inference"] == "0.0.0.0"
    assert extra["model_store"] == str(tmp_path)
    assert extra["models"] == ["a=a.mar", "b.mar"]
    assert extra["default_workers_per_model"] == 3 and extra["enable_model_api"] is True
    assert extra["ts_models_config"] == {"a": {"1.0": {"batchSize": 8, "maxBatchDelay": 50}}}
    store_options = ArchiveOptions(models_config=extra["ts_models_config"])
    assert store_options.models_config["a"]["1.0"]["batchSize"] == 8


# -- decompression bombs and sizes -----------------------------------------------------------
GOOD = {"MAR-INF/MANIFEST.json": manifest("m", serializedFile="model.onnx")}
MiB = 1024**2


def _bomb(writer, path: Path, size: int) -> Path:
    return writer(path, size, **GOOD)


@pytest.mark.parametrize("writer, suffix", [(zip_bomb, ".mar"), (tar_bomb, ".tar.gz")])
def test_an_archive_expanding_more_than_the_ratio_is_refused_from_its_listing(tmp_path, writer, suffix):
    path = _bomb(writer, tmp_path / f"bomb{suffix}", 8 * MiB)  # zeros: about 229 times smaller
    _refused(path, "--max-archive-ratio", tmp_path)
    with Archive(path, Limits(max_ratio=1000)) as archive:  # the operator's higher ratio lets it through
        archive.extract(tmp_path / "allowed")
    assert (tmp_path / "allowed" / "model.onnx").stat().st_size == 8 * MiB


def test_small_entries_are_not_held_to_the_ratio(tmp_path):
    path = _bomb(zip_bomb, tmp_path / "small.mar", MiB - 1024)  # below RATIO_FLOOR: too small to be a bomb
    with Archive(path) as archive:
        archive.extract(tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").stat().st_size == MiB - 1024


def test_many_small_entries_are_held_to_the_ratio_together(tmp_path):
    entries = {**GOOD, **{f"part{i}.bin": bytes(MiB // 2) for i in range(8)}}  # each below the floor
    path = tmp_path / "many.mar"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=2) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    _refused(path, "its ", tmp_path)
    assert "--max-archive-ratio" in _refused(path, "expand", tmp_path)


@pytest.mark.parametrize("writer, suffix", [(zip_bomb, ".mar"), (tar_bomb, ".tar.gz")])
def test_an_archive_over_the_size_limit_is_refused_before_anything_is_written(tmp_path, writer, suffix):
    path = _bomb(writer, tmp_path / f"big{suffix}", 2 * MiB)
    message = _refused(path, "--max-archive-size", tmp_path, Limits(max_bytes=MiB, max_ratio=10**6))
    assert "'model.onnx'" in message or "bomb/model.onnx" in message  # the entry is named
    with Archive(path, Limits(max_bytes=3 * MiB, max_ratio=10**6)) as archive:
        assert "model.onnx" in archive.files


def test_a_tar_member_over_a_limit_is_refused_before_its_content_is_read(tmp_path, monkeypatch):
    path = _bomb(tar_bomb, tmp_path / "bomb.tar.gz", 64 * MiB)
    decompressed = []  # how far each opened tar's gzip stream was read when it closed
    close = tarfile.TarFile.close

    def recording_close(self: tarfile.TarFile) -> None:
        if not self.closed:
            decompressed.append(self.fileobj.tell())
        close(self)

    monkeypatch.setattr(tarfile.TarFile, "close", recording_close)
    _refused(path, "--max-archive-ratio", tmp_path)
    assert decompressed and max(decompressed) < MiB  # stopped at the member's header, not 64 MiB further


def test_a_lying_zip_entry_cannot_write_more_than_it_declares(tmp_path):
    path = tmp_path / "liar.mar"
    zip_archive(path, {**GOOD, "model.onnx": bytes(3 * MiB)})
    data = bytearray(path.read_bytes())
    # Declare 1 MiB in the central directory: reading stops there (and the CRC check fails).
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (MiB).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    message = _refused(path, "could not be extracted", tmp_path)
    assert str(tmp_path) not in message


@pytest.mark.parametrize("name, words", [
    ("a" * 256 + ".onnx", "longer than 255 bytes"),
    ("/".join(["d" * 200] * 6) + "/x", "longer than 1024 bytes"),
])
@pytest.mark.parametrize("writer", [zip_archive, tar_archive])
def test_entry_names_the_file_system_cannot_take_are_refused(tmp_path, writer, name, words):
    suffix = ".mar" if writer is zip_archive else ".tar.gz"
    path = writer(tmp_path / f"names{suffix}", {**GOOD, "model.onnx": MODEL, name: b"x"})
    message = _refused(path, words, tmp_path)
    assert len(message) < 400  # a long name is cut, not echoed whole


def test_hard_links_in_a_tar_are_refused(tmp_path):
    path = tmp_path / "hard.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for name, data in GOOD.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("model.onnx")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
    _refused(path, "is a link", tmp_path)


def test_the_catalog_applies_the_operator_limits_at_registration_and_startup(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    _bomb(zip_bomb, store / "bomb.mar", 8 * MiB)
    catalog = MarCatalog(store, ArchiveOptions(model_store=store))
    with pytest.raises(ServerError) as e:
        catalog.prepare("bomb.mar", None, {})
    assert e.value.code == Code.INVALID_ARG and "--max-archive-ratio" in e.value.message
    assert list(catalog._root.iterdir()) == []  # nothing extracted, not even an empty folder
    catalog.add_startup("bomb.mar")  # at startup: the model is known and fails to load with the reason
    with pytest.raises(ServerError) as e:
        catalog.read("bomb")  # named after its file: its manifest was never read
    assert "--max-archive-ratio" in e.value.message
    assert list(catalog._root.iterdir()) == []
    relaxed = MarCatalog(store, ArchiveOptions(model_store=store, max_archive_ratio=1000))
    assert relaxed.prepare("bomb.mar", None, {}).name == "m"
    small = MarCatalog(store, ArchiveOptions(model_store=store, max_archive_size=MiB, max_archive_ratio=1000))
    with pytest.raises(ServerError) as e:
        small.prepare("bomb.mar", None, {})
    assert "--max-archive-size" in e.value.message


def test_archive_limits_come_from_the_command_line():
    args = parser().parse_args(["serve", "--max-archive-size", "1000", "--max-archive-ratio", "50.5"])
    assert (from_args(args).archives.max_archive_size, from_args(args).archives.max_archive_ratio) == (1000, 50.5)
    defaults = from_args(parser().parse_args(["serve"])).archives
    assert (defaults.max_archive_size, defaults.max_archive_ratio) == (4 * 1024**3, 200)
    for flag, value in (("--max-archive-size", "0"), ("--max-archive-ratio", "-1"), ("--max-archive-ratio", "inf")):
        with pytest.raises(SystemExit):
            parser().parse_args(["serve", flag, value])


def test_long_or_odd_registration_names_are_refused_plainly(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ServerError) as e:
        in_store(store, "a" * 300 + ".mar")
    assert e.value.code == Code.INVALID_ARG and "longer than 255 bytes" in e.value.message
    assert str(store) not in e.value.message


def test_handler_names_resolve_as_torchserve_model_loader_resolves_them():
    from triserve.repository.mar import resolve_handler

    files = {"MAR-INF/MANIFEST.json", "my_handler.py", "model.pt"}
    assert resolve_handler("serve/ts/torch_handler/image_classifier.py:handle", files) == "image_classifier"
    assert resolve_handler("object_detector", files) == "object_detector"
    assert resolve_handler("my_handler:handle", files) == "my_handler.py:handle"
    assert resolve_handler("some/dir/my_handler.py", files) == "my_handler.py"
    assert resolve_handler("invalidHandler", files) == "invalidHandler"  # stays as given: its start fails
    # a file of the archive wins over a built-in name, as Python's import in the model folder does
    assert resolve_handler("image_classifier", files | {"image_classifier.py"}) == "image_classifier.py"
