"""`triserve classify`: Triton image_client.py over the v2 protocol, printing the blog's lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
from PIL import Image

from triserve.vision.images import image_client_preprocess, image_files


def model_input_spec(metadata: dict[str, Any], config: dict[str, Any]) -> tuple[str, str, str, str, int, int, int, int]:
    """(input name, output name, datatype, layout, c, h, w, max_batch_size) as image_client parses them."""
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1:
        raise ValueError(f"expecting 1 input and 1 output, model has {len(metadata['inputs'])} and {len(metadata['outputs'])}")
    inp, out = metadata["inputs"][0], metadata["outputs"][0]
    if out["datatype"] != "FP32":
        raise ValueError(f"expecting output datatype to be FP32, model '{metadata['name']}' output type is {out['datatype']}")
    max_batch_size = int(config.get("max_batch_size", 0))
    shape = [int(d) for d in inp["shape"]]
    if max_batch_size > 0:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"expecting input to have 3 dimensions, model '{metadata['name']}' input has {len(shape)}")
    layout = config["input"][0].get("format", "FORMAT_NONE").removeprefix("FORMAT_")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"unexpected input format {layout}, expecting FORMAT_NCHW or FORMAT_NHWC")
    if layout == "NHWC":
        h, w, c = shape
    else:
        c, h, w = shape
    return inp["name"], out["name"], inp["datatype"], layout, c, h, w, max_batch_size


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    return tc, tc.InferenceServerClient(url=url)


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
        input_name, output_name, datatype, layout, c, h, w, max_batch = model_input_spec(metadata, config)
    except (InferenceServerException, ValueError, KeyError) as e:
        print(f"triserve classify: {e}", file=sys.stderr)
        return 1
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
            arrays = [image_client_preprocess(Image.open(f), layout, dtype, c, h, w, args.scaling) for f in chunk]
        except OSError as e:
            print(f"triserve classify: cannot read image: {e}", file=sys.stderr)
            return 1
        batch = np.stack(arrays) if max_batch > 0 else arrays[0]
        infer_input = tc.InferInput(input_name, list(batch.shape), datatype)
        infer_input.set_data_from_numpy(batch)
        output = tc.InferRequestedOutput(output_name, class_count=args.classes)
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
            for item in row:
                text = item.decode() if isinstance(item, bytes) else str(item)
                print(text.split(":"))
    return 0
