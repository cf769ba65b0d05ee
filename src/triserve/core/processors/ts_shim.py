"""The parts of TorchServe's `ts` Python package that custom handlers import.

Custom handlers (only run with --allow-custom-handlers) usually start with
`from ts.torch_handler.base_handler import BaseHandler`. When the real `ts` package is not
installed, `install()` registers these stand-ins under the same module names: Context,
BaseHandler (TorchScript / ONNX / eager state_dict loading, preprocess -> inference ->
postprocess), VisionHandler, ImageClassifier, PredictionException and the label helpers.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

log = logging.getLogger("triserve")


class PredictionException(Exception):
    """`raise PredictionException(message, status)` answers that HTTP status."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


class _Metrics:
    """Handlers record metrics through context.metrics; triserve keeps its own, so these are no-ops."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Context:
    """What a handler's initialize() and handle() receive (ts/context.py)."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict, batch_size: int, gpu: int | None,
                 mms_version: str, limit_max_image_pixels: bool = True, model_yaml_config: dict | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self.request_processor: list[Any] | None = None
        self._metrics = _Metrics()
        self.model_yaml_config = model_yaml_config or {}
        self.response_content_types: dict[int, str] = {}
        self.response_status: dict[int, tuple[int, str]] = {}

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def metrics(self) -> _Metrics:
        return self._metrics

    def start_batch(self, size: int) -> None:
        self.request_ids = {i: str(i) for i in range(size)}
        self.response_content_types = {}
        self.response_status = {}

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx) if self.request_ids else None

    def get_request_header(self, idx: int, key: str) -> str | None:
        return None  # request headers are not passed to handlers

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_content_types[idx] = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.response_content_types.get(idx)

    def get_response_status(self, idx: int) -> tuple[int, str] | None:
        return self.response_status.get(idx)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.response_status[idx] = (code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for idx in range(len(self.request_ids or {})):
            self.set_response_status(code, phrase, idx)


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    from triserve.core.processors.image_classifier import load_label_mapping as load

    return load(Path(mapping_file_path))


def map_class_to_label(probs: list, mapping: dict | None = None, lbl_classes: list | None = None) -> list[dict]:
    if lbl_classes is None:
        lbl_classes = [list(range(len(p))) for p in probs]
    return [
        {(mapping.get(str(c), str(c)) if mapping is not None else str(c)): p for c, p in zip(classes, row)}
        for classes, row in zip(lbl_classes, probs)
    ]


def _import_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BaseHandler:
    """ts.torch_handler.base_handler.BaseHandler: load the archive's model, tensor in, list out."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Context | None = None
        self.manifest: dict = {}
        self.model_dir = ""

    def initialize(self, context: Context) -> None:
        import torch

        properties = context.system_properties
        self.context = context
        self.manifest = context.manifest
        self.model_dir = properties["model_dir"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        model = self.manifest["model"]
        serialized = model.get("serializedFile")
        path = Path(self.model_dir, serialized) if serialized else None
        if model.get("modelFile"):
            self.model = self._load_eager(Path(self.model_dir, model["modelFile"]), path)
        elif path is not None and path.suffix in (".pt", ".pth", ".torchscript"):
            self.model = torch.jit.load(str(path), map_location=self.device)
        elif path is not None and path.suffix == ".onnx":
            import onnxruntime as ort

            self.model = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        else:
            raise RuntimeError("No model weights could be loaded")
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.mapping = load_label_mapping(str(Path(self.model_dir, "index_to_name.json")))
        self.initialized = True

    def _load_eager(self, model_file: Path, weights: Path | None) -> Any:
        import torch

        module = _import_file(model_file, f"triserve_eager_{abs(hash(str(model_file)))}")
        classes = [c for c in vars(module).values()
                   if isinstance(c, type) and issubclass(c, torch.nn.Module) and c.__module__ == module.__name__]
        if len(classes) != 1:
            raise ValueError(f"expected exactly one torch.nn.Module class in {model_file.name}, found {len(classes)}")
        model = classes[0]()
        if weights is not None:
            model.load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
        return model.to(self.device)

    def preprocess(self, data: list) -> Any:
        import torch

        return torch.as_tensor(data, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if hasattr(self.model, "run") and not isinstance(self.model, torch.nn.Module):  # onnxruntime
            name = self.model.get_inputs()[0].name
            return torch.from_numpy(self.model.run(None, {name: data.cpu().numpy()})[0])
        with torch.inference_mode():
            return self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list:
        return data.tolist()

    def handle(self, data: list, context: Context) -> list:
        self.context = context
        return self.postprocess(self.inference(self.preprocess(data)))


class VisionHandler(BaseHandler):
    """Rows of image bytes (or base64 text) through `image_processing` into one batch tensor."""

    image_processing: Any = None

    def preprocess(self, data: list) -> Any:
        import base64

        import torch

        from triserve.vision.images import decode, imagenet_preprocess

        images = []
        for row in data:
            image = row.get("data") or row.get("body")
            if isinstance(image, str):
                image = base64.b64decode(image)
            if isinstance(image, (bytes, bytearray)):
                pil = decode(bytes(image))
                if self.image_processing is not None:
                    tensor = self.image_processing(pil)
                else:
                    tensor = torch.from_numpy(imagenet_preprocess(pil))
            else:
                tensor = torch.FloatTensor(image)
            images.append(tensor)
        return torch.stack(images).to(self.device)


class ImageClassifier(VisionHandler):
    topk = 5

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list:
        import torch
        import torch.nn.functional as F

        ps = F.softmax(data, dim=1)
        probs, classes = torch.topk(ps, self.topk, dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())


def install() -> None:
    """Make `import ts...` find these classes, unless the real TorchServe package is installed."""
    if "ts" in sys.modules or importlib.util.find_spec("ts") is not None:
        return
    modules = {
        "ts": {},
        "ts.context": {"Context": Context},
        "ts.torch_handler": {},
        "ts.torch_handler.base_handler": {"BaseHandler": BaseHandler},
        "ts.torch_handler.vision_handler": {"VisionHandler": VisionHandler},
        "ts.torch_handler.image_classifier": {"ImageClassifier": ImageClassifier},
        "ts.utils": {},
        "ts.utils.util": {"PredictionException": PredictionException, "load_label_mapping": load_label_mapping,
                          "map_class_to_label": map_class_to_label},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        if any(other.startswith(name + ".") for other in modules):
            module.__path__ = []  # a package, so submodule imports resolve
        sys.modules[name] = module
    for name in modules:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
