"""`triserve classify`: Triton image_client.py over the v2 protocol, printing the blog's lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
from PIL import Image

from triserve.errors import ServerError
from triserve.vision.images import image_client_preprocess, image_files, imagenet_preprocess


class NotAnImageClassifier(ValueError):
    """The model's inputs and outputs are not one image in, one vector of class scores out."""


CLASSIFIER = "one image input ([C,H,W] or [H,W,C], C 1 or 3) and one FP32 output of class scores"


def _layout(name: str, declared: str, shape: list[int]) -> str:
    """NCHW or NHWC: the config's format, or for FORMAT_NONE (auto-completed models) the dims'
    channel position: [3,224,224] is CHW, [224,224,3] HWC."""
    if declared in ("NCHW", "NHWC"):
        return declared
    if declared != "NONE":
        raise NotAnImageClassifier(f"model '{name}' is not an image classifier: unexpected input format {declared}")
    chw, hwc = shape[0] in (1, 3), shape[2] in (1, 3)
    if chw and not hwc:
        return "NCHW"
    if hwc and not chw:
        return "NHWC"
    if chw and hwc:
        return "NCHW"
    raise NotAnImageClassifier(
        f"model '{name}' is not an image classifier: its input has no format and dims {shape} have 1 or 3"
        " channels neither first (CHW) nor last (HWC)"
    )


def model_input_spec(metadata: dict[str, Any], config: dict[str, Any]) -> tuple[str, str, str, str, int, int, int, int]:
    """(input name, output name, datatype, layout, c, h, w, max_batch_size), as image_client parses
    them; a model that is not an image classifier raises NotAnImageClassifier saying why."""
    name = metadata["name"]
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1:
        raise NotAnImageClassifier(
            f"model '{name}' is not an image classifier: it has {len(metadata['inputs'])} input(s) and"
            f" {len(metadata['outputs'])} output(s); classify needs {CLASSIFIER}"
        )
    inp, out = metadata["inputs"][0], metadata["outputs"][0]
    if out["datatype"] != "FP32":
        raise NotAnImageClassifier(
            f"model '{name}' is not an image classifier: its output '{out['name']}' is {out['datatype']};"
            f" classify needs {CLASSIFIER}"
        )
    if inp["datatype"] in ("BYTES", "BOOL"):
        raise NotAnImageClassifier(
            f"model '{name}' is not an image classifier: its input '{inp['name']}' is {inp['datatype']};"
            f" classify needs {CLASSIFIER}"
        )
    max_batch_size = int(config.get("max_batch_size", 0))
    shape = [int(d) for d in inp["shape"]]
    if max_batch_size > 0:
        shape = shape[1:]
    if len(shape) != 3:
        raise NotAnImageClassifier(
            f"model '{name}' is not an image classifier: its input '{inp['name']}' has {len(shape)} dimension(s)"
            f" {shape}; classify needs {CLASSIFIER}"
        )
    inputs = config.get("input") or [{}]
    layout = _layout(name, inputs[0].get("format", "FORMAT_NONE").removeprefix("FORMAT_"), shape)
    if layout == "NHWC":
        h, w, c = shape
    else:
        c, h, w = shape
    if min(c, h, w) <= 0:
        raise NotAnImageClassifier(
            f"model '{name}' takes images of variable size ({shape}); classify needs fixed dims to resize to"
        )
    if c not in (1, 3):
        raise NotAnImageClassifier(f"model '{name}' is not an image classifier: its input has {c} channels, not 1 or 3")
    return inp["name"], out["name"], inp["datatype"], layout, c, h, w, max_batch_size


def handler_of(config: dict[str, Any]) -> str:
    """The TorchServe handler of an archive's model (config parameter torchserve_handler), or ""."""
    value = (config.get("parameters") or {}).get("torchserve_handler") or {}
    return value.get("string_value", "") if isinstance(value, dict) else ""


def output_classes(metadata: dict[str, Any]) -> int:
    shape = [int(d) for d in metadata["outputs"][0]["shape"]]
    return shape[-1] if shape and shape[-1] > 0 else 0


def softmax_top(items: list[Any], count: int) -> list[str]:
    """Classification strings "value:index[:label]" of every class (logits) -> the top `count` as
    softmax probabilities, as TorchServe's image_classifier answers."""
    parsed = []
    for item in items:
        text = item.decode() if isinstance(item, bytes) else str(item)
        value, _, rest = text.partition(":")
        parsed.append((float(value), rest))
    logits = np.array([v for v, _ in parsed], dtype=np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:count]
    return [f"{probabilities[i]:f}:{parsed[i][1]}" for i in order]


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    return tc, tc.InferenceServerClient(url=url)


def _classify_server_side(args: argparse.Namespace, tc, client, metadata: dict, config: dict) -> int:
    """--server-side: each image file is sent as it is, one BYTES element, to a model that decodes
    and prepares it itself (efficientnet_lite0_jpeg)."""
    from tritonclient.utils import InferenceServerException

    inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
    if len(inputs) != 1 or inputs[0].get("datatype") != "BYTES" or len(outputs) != 1:
        print(f"triserve classify: --server-side needs a model with one BYTES input and one output;"
              f" '{args.model_name}' has {len(inputs)} input(s) and {len(outputs)} output(s)", file=sys.stderr)
        return 1
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    files = image_files(args.images)
    if not files:
        print("triserve classify: no images found", file=sys.stderr)
        return 1
    for request_id, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError as e:
            print(f"triserve classify: cannot read image: {e}", file=sys.stderr)
            return 1
        array = np.array([[data]] if batched else [data], dtype=np.object_)
        infer_input = tc.InferInput(inputs[0]["name"], list(array.shape), "BYTES")
        infer_input.set_data_from_numpy(array)
        output = tc.InferRequestedOutput(outputs[0]["name"], class_count=args.classes)
        try:
            result = client.infer(args.model_name, [infer_input], model_version=args.model_version,
                                  outputs=[output], request_id=str(request_id))
        except InferenceServerException as e:
            print(f"triserve classify: {e}", file=sys.stderr)
            return 1
        row = result.as_numpy(outputs[0]["name"]).reshape(-1)
        if len(files) > 1:
            print(f"{path}:")
        for item in row:
            text = item.decode() if isinstance(item, bytes) else str(item)
            print(text.split(":"))
    return 0


def classify_main(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException, triton_to_np_dtype

    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    tc, client = _client(args.protocol, url)
    try:
        if args.protocol == "grpc":
            from google.protobuf import json_format

            metadata = json_format.MessageToDict(
                client.get_model_metadata(args.model_name, args.model_version), preserving_proto_field_name=True
            )
            config = json_format.MessageToDict(
                client.get_model_config(args.model_name, args.model_version).config, preserving_proto_field_name=True
            )
        else:
            metadata = client.get_model_metadata(args.model_name, args.model_version)
            config = client.get_model_config(args.model_name, args.model_version)
        if getattr(args, "server_side", False):
            return _classify_server_side(args, tc, client, metadata, config)
        input_name, output_name, datatype, layout, c, h, w, max_batch = model_input_spec(metadata, config)
    except (InferenceServerException, ValueError, KeyError) as e:
        print(f"triserve classify: {e}", file=sys.stderr)
        return 1
    # A TorchServe image_classifier archive: its handler's preprocessing (resize 256, crop 224,
    # ImageNet normalisation) and softmax, unless a scaling was asked for.
    imagenet = handler_of(config) == "image_classifier" and args.scaling == "NONE" and layout == "NCHW" and c == 3
    classes = output_classes(metadata) if imagenet else 0
    if imagenet:
        print(f"triserve classify: '{args.model_name}' is a TorchServe image_classifier archive: preprocessing"
              " as its handler does (resize 256, crop 224, ImageNet mean and std), softmax over its logits",
              file=sys.stderr)
    files = image_files(args.images)
    if not files:
        print("triserve classify: no images found", file=sys.stderr)
        return 1
    batch_size = max(1, min(args.batch_size, max_batch)) if max_batch > 0 else 1
    dtype = triton_to_np_dtype(datatype)
    request_id = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        try:
            if imagenet:
                arrays = [imagenet_preprocess(Image.open(f), crop=h).astype(dtype) for f in chunk]
            else:
                arrays = [image_client_preprocess(Image.open(f), layout, dtype, c, h, w, args.scaling) for f in chunk]
        except (OSError, ServerError) as e:
            print(f"triserve classify: cannot read image: {e}", file=sys.stderr)
            return 1
        batch = np.stack(arrays) if max_batch > 0 else arrays[0]
        infer_input = tc.InferInput(input_name, list(batch.shape), datatype)
        infer_input.set_data_from_numpy(batch)
        output = tc.InferRequestedOutput(output_name, class_count=classes or args.classes)
        try:
            result = client.infer(
                args.model_name, [infer_input], model_version=args.model_version,
                outputs=[output], request_id=str(request_id),
            )
        except InferenceServerException as e:
            print(f"triserve classify: {e}", file=sys.stderr)
            return 1
        request_id += 1
        rows = result.as_numpy(output_name)
        if max_batch == 0:
            rows = rows[None]
        for path, row in zip(chunk, rows):
            if len(files) > 1:
                print(f"{path}:")
            if classes:
                row = softmax_top(list(row), args.classes)
            for item in row:
                text = item.decode() if isinstance(item, bytes) else str(item)
                print(text.split(":"))
    return 0
