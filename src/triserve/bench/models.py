"""The repository's models as the benchmark sees them: one sample input each, and its requests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from triserve.bench.load import http_request
from triserve.bench.raw import FRAMEWORKS


@dataclass
class BenchModel:
    """What runs a model in-process, and one sample input laid out as its config says."""

    name: str
    platform: str
    model_file: Path
    input_name: str
    output_name: str
    datatype: str
    sample: np.ndarray

    @property
    def framework(self) -> str:
        return FRAMEWORKS.get(self.platform, self.platform)


def photo() -> Any:
    """A real photo (451x300) when scikit-image is there, else noise of the same size."""
    from PIL import Image

    try:
        from skimage import data

        return Image.fromarray(data.chelsea())
    except ImportError:  # scikit-image is a test / examples extra
        return Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8))


def jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def read_bench_model(repo: Path, name: str, image: Any) -> BenchModel:
    """A Triton repository model with one image input (NCHW or NHWC, as image_client sends it)."""
    from triserve import backends, datatypes
    from triserve.repository.triton import read_model
    from triserve.vision.images import image_client_preprocess

    spec = read_model(name, repo / name)
    config = spec.config
    version_dir = spec.versions[max(spec.versions)]
    platform = backends.platform_of(config, version_dir)
    model_file = version_dir / (config.default_model_filename or backends.get(platform).DEFAULT_FILENAME)
    if not config.input or not config.output:
        raise RuntimeError(f"model '{name}': the benchmark needs its inputs and outputs in config.pbtxt")
    tensor = config.input[0]
    layout = mc.ModelInput.Format.Name(tensor.format).removeprefix("FORMAT_")
    dims = list(tensor.dims)
    c, h, w = (dims[2], dims[0], dims[1]) if layout == "NHWC" else dims
    datatype = datatypes.name_of_config(tensor.data_type)
    sample = image_client_preprocess(image, layout, datatypes.to_numpy(datatype), c, h, w, "NONE")
    return BenchModel(name, platform, model_file, tensor.name, config.output[0].name, datatype, sample)


def v2_binary_request(model: BenchModel, port: int) -> bytes:
    """A v2 HTTP inference of one sample as a binary tensor, its output asked as binary too."""
    import orjson

    data = model.sample[None].tobytes()
    header = orjson.dumps({
        "inputs": [{"name": model.input_name, "shape": [1, *model.sample.shape], "datatype": model.datatype,
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": model.output_name, "parameters": {"binary_data": True}}],
    })
    return http_request("POST", f"/v2/models/{model.name}/infer", port, header + data,
                        {"Inference-Header-Content-Length": str(len(header))})


def v2_grpc_request(model: BenchModel) -> bytes:
    """A serialized ModelInferRequest of one sample in raw_input_contents, as tritonclient sends it."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model.name)
    request.inputs.add(name=model.input_name, datatype=model.datatype, shape=[1, *model.sample.shape])
    request.outputs.add(name=model.output_name)
    request.raw_input_contents.append(model.sample[None].tobytes())
    return request.SerializeToString()


def v2_bytes_request(model: str, input_name: str, output_name: str, data: bytes, port: int, top_k: int = 0) -> bytes:
    """A v2 HTTP inference of one encoded file (a JPEG) as a binary BYTES tensor of shape [1, 1]
    (a 4-byte little-endian length, then the bytes); the output binary, as the top `top_k`
    classes (Triton's classification extension) when `top_k` is set."""
    import struct

    import orjson

    element = struct.pack("<I", len(data)) + data
    output: dict[str, Any] = {"binary_data": True}
    if top_k:
        output["classification"] = top_k
    header = orjson.dumps({
        "inputs": [{"name": input_name, "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": output_name, "parameters": output}],
    })
    return http_request("POST", f"/v2/models/{model}/infer", port, header + element,
                        {"Inference-Header-Content-Length": str(len(header))})
