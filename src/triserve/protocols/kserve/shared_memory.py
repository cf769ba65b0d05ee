"""Triton's system shared memory extension: clients register POSIX shared memory objects
(/dev/shm/<key>) as named regions, then name a region, offset and byte size in an input's or
requested output's parameters instead of sending the tensor's bytes.

One registry per data plane, shared by the HTTP and gRPC front ends (a region registered over one
is usable over the other), as in Triton. Inputs are read straight from the mapping (read-only
numpy views, no copy; the backend copies into its own tensors when it must); outputs are written
into the region once the model answered. Unregistering a region that an in-flight request still
reads only drops the registry's reference: the mapping goes away with its last view.

Registration is off unless the server runs with --allow-client-shm (Triton's default is off too:
a client may map any shared memory object the server's user can open).

CUDA shared memory is not supported (no GPU memory here): registering answers Triton's words for a
server without GPUs; status answers no regions and unregistering all is a no-op, as in Triton.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from triserve.errors import Code, ServerError, invalid, not_found

SHM_DIR = "/dev/shm"
RESERVED_PREFIX = "triton_python_backend_shm_region_"
DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
MAX_REGIONS = 4096  # registered at once; each is a mapping of the server's address space


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    view: memoryview  # the registered bytes: [offset, offset + byte_size) of the object

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class Target:
    """Where a requested output goes: `byte_size` bytes of a region from `offset`."""

    region: str
    view: memoryview  # exactly the bytes the request named


class SystemSharedMemory:
    def __init__(self, allow_client: bool = False) -> None:
        self.allow_client = allow_client
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # registration maps files off the event loop's hands too

    # -- registration -------------------------------------------------------------------------
    def _check_allowed(self) -> None:
        if not self.allow_client:
            raise ServerError(DISABLED, Code.UNSUPPORTED)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map `byte_size` bytes of /dev/shm/<key> from `offset` as region `name` (Triton's checks
        and words)."""
        self._check_allowed()
        if not name:
            raise invalid("'region name' is necessary to register system shared memory region")
        stripped = key.lstrip("/")
        if not stripped:
            raise invalid(f"cannot register shared memory region '{name}' - invalid shm key '{key}'")
        if stripped.startswith(RESERVED_PREFIX):
            raise invalid(
                f"cannot register shared memory region '{name}' with key '{key}' as the key contains the"
                f" reserved prefix '{RESERVED_PREFIX}'"
            )
        if offset < 0 or byte_size < 0:
            raise invalid(f"failed to register shared memory region '{name}': invalid args")
        with self._lock:
            if name in self._regions:
                raise ServerError(f"shared memory region '{name}' already in manager", Code.ALREADY_EXISTS)
            if len(self._regions) >= MAX_REGIONS:
                raise invalid(
                    f"failed to register shared memory region '{name}': {MAX_REGIONS} regions are registered"
                    " already; unregister some first"
                )
            self._regions[name] = _map(name, key, stripped, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Region `name`, or every region when `name` is empty; an unknown name is no error."""
        self._check_allowed()
        with self._lock:
            regions = list(self._regions.values()) if not name else [self._regions[name]] if name in self._regions else []
            for region in regions:
                del self._regions[region.name]
        for region in regions:
            _release(region)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        with self._lock:
            if not name:
                return [r.status() for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise not_found(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._regions

    # -- use ----------------------------------------------------------------------------------
    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """The bytes a tensor names, with Triton's checks (GetMemoryInfo)."""
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise not_found(f"Unable to find shared memory region: '{name}'")
        if offset < 0 or offset >= region.byte_size:
            raise invalid(f"Invalid offset for shared memory region: '{name}'")
        if byte_size < 0 or offset + byte_size > region.byte_size:
            raise invalid(f"Invalid offset + byte size for shared memory region: '{name}'")
        return region.view[offset : offset + byte_size]

    def close(self) -> None:
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            _release(region)


def _map(name: str, key: str, stripped: str, offset: int, byte_size: int) -> Region:
    # As shm_open: the name after its leading slashes, one path component, no links followed.
    if "/" in stripped or stripped in (".", ".."):
        raise invalid(f"Unable to open shared memory region: '{key}'")
    try:
        fd = os.open(os.path.join(SHM_DIR, stripped), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise invalid(f"Unable to open shared memory region: '{key}'") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise invalid(f"Unable to open shared memory region: '{key}'")
        if offset + byte_size > info.st_size:
            raise invalid(f"failed to register shared memory region '{name}': invalid args")
        if byte_size == 0:  # mmap cannot map nothing (Triton's mmap fails the same way)
            raise invalid(f"failed to register shared memory region '{name}': invalid args")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets are page-aligned
        try:
            mapping = mmap.mmap(fd, offset + byte_size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                offset=start)
        except (OSError, ValueError, OverflowError):
            raise invalid(f"failed to register shared memory region '{name}': unable to map the region") from None
    finally:
        os.close(fd)
    view = memoryview(mapping)[offset - start :]
    return Region(name, key, offset, byte_size, mapping, view)


def _release(region: Region) -> None:
    try:
        region.view.release()
        region.mapping.close()
    except BufferError:  # an in-flight request still reads it: unmapped with its last view
        pass


# -- one registry per data plane ---------------------------------------------------------------
_REGISTRIES: weakref.WeakKeyDictionary[Any, SystemSharedMemory] = weakref.WeakKeyDictionary()


def registry(dataplane: object, allow_client: bool = False) -> SystemSharedMemory:
    """The data plane's registry (made on first use), shared by its HTTP and gRPC front ends."""
    found = _REGISTRIES.get(dataplane)
    if found is None:
        found = _REGISTRIES[dataplane] = SystemSharedMemory(allow_client)
    return found


# -- what the front ends share ------------------------------------------------------------------
def cuda_register_error(name: str) -> ServerError:
    return invalid(f"failed to register CUDA shared memory region: '{name}', GPUs not supported")


def cuda_status(shm: SystemSharedMemory, name: str) -> list[dict[str, Any]]:
    if name:
        if shm.has(name):
            raise not_found(f"The region named '{name}' is registered as system shared memory, not CUDA shared memory")
        raise not_found(f"Unable to find cuda shared memory region: '{name}'")
    return []


def cuda_unregister(shm: SystemSharedMemory, name: str) -> None:
    shm._check_allowed()  # nothing is ever registered: Triton answers OK


def input_view(shm: SystemSharedMemory | None, region: str, offset: int, byte_size: int) -> memoryview:
    """An input's bytes, read-only (a model never writes the client's region)."""
    if shm is None:
        raise not_found(f"Unable to find shared memory region: '{region}'")
    return shm.view(region, offset, byte_size).toreadonly()


def output_target(shm: SystemSharedMemory | None, region: str, offset: int, byte_size: int) -> Target:
    if shm is None:
        raise not_found(f"Unable to find shared memory region: '{region}'")
    return Target(region, shm.view(region, offset, byte_size))


def _too_small(name: str, have: int, need: int) -> ServerError:
    return invalid(
        f"shared memory size specified with the request for output '{name}' ({have} bytes)"
        f" should be at least {need} bytes to hold the results"
    )


def write_output(name: str, blob: bytes, target: Target) -> None:
    """One output's bytes into its region (Triton's check that they fit)."""
    if len(blob) > len(target.view):
        raise _too_small(name, len(target.view), len(blob))
    target.view[: len(blob)] = blob


def write_outputs(outputs: Mapping[str, np.ndarray], targets: Mapping[str, Target], to_bytes) -> None:
    """Every output that has a target: fixed-size ones copied straight into the region (little
    endian, row-major), BYTES ones serialized by `to_bytes`. Sizes are checked before any is
    written, so that a refused answer leaves the regions as they were."""
    blobs = {name: to_bytes(outputs[name]) for name in targets if name in outputs and outputs[name].dtype == np.object_}
    for name in targets:
        if name in outputs:
            size = len(blobs[name]) if name in blobs else outputs[name].nbytes
            if size > len(targets[name].view):
                raise _too_small(name, len(targets[name].view), size)
    for name, target in targets.items():
        if name not in outputs:
            continue
        if name in blobs:
            write_output(name, blobs[name], target)
            continue
        array = outputs[name]
        dtype = array.dtype.newbyteorder("<")
        region = np.frombuffer(target.view, dtype=dtype, count=array.size).reshape(array.shape)
        np.copyto(region, array, casting="no" if dtype == array.dtype else "equiv")


def output_bytes(outputs: Mapping[str, np.ndarray], targets: Iterable[str]) -> int:
    return sum(outputs[n].nbytes for n in targets if n in outputs)


# -- HTTP JSON parameters ------------------------------------------------------------------------
def _uint(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"Unable to parse '{key}': expected an unsigned integer")
    return value


def json_location(params: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when the JSON parameters name a shared memory region."""
    if "shared_memory_region" not in params:
        return None
    region = params["shared_memory_region"]
    if not isinstance(region, str):
        raise invalid("Unable to parse 'shared_memory_region': expected a string")
    return region, _uint(params, "shared_memory_offset"), _uint(params, "shared_memory_byte_size")


def json_output_check(params: Mapping[str, Any]) -> None:
    """Triton's ValidateOutputParameter: shared memory excludes classification and binary data."""
    if "shared_memory_region" not in params:
        return
    if "classification" in params:
        raise invalid("Output can't set both 'shared_memory_region' and 'classification'")
    if params.get("binary_data") is True:
        raise invalid("Output can't set both 'shared_memory_region' and 'binary_data'")


def json_input_fields_error(item: Mapping[str, Any], params: Mapping[str, Any]) -> ServerError | None:
    """Triton's ValidateInputContentType: exactly one of data, binary_data_size, shared_memory_region."""
    present = [
        ("'data'", "data" in item),
        ("'binary_data_size'", "binary_data_size" in params),
        ("'shared_memory_region'", "shared_memory_region" in params),
    ]
    count = sum(1 for _, is_set in present if is_set)
    if count == 1:
        return None
    but = " no field is set" if count == 0 else " set " + " ".join(name for name, is_set in present if is_set)
    return invalid(
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters',"
        " 'shared_memory_region' in 'parameters'. But" + but
    )


# -- gRPC InferParameter maps ---------------------------------------------------------------------
def grpc_location(tensor: Any) -> tuple[str, int, int] | None:
    """Triton's ParseSharedMemoryParams on an input's or requested output's parameters."""
    params = tensor.parameters
    name = tensor.name
    has_region = "shared_memory_region" in params
    region = ""
    if has_region:
        p = params["shared_memory_region"]
        if p.WhichOneof("parameter_choice") != "string_param":
            raise invalid(
                f"invalid value type for 'shared_memory_region' parameter for tensor '{name}', expected string_param."
            )
        region = p.string_param
    values = {}
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        if key not in params:
            values[key] = 0
            continue
        if not has_region:
            raise invalid(f"'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{name}'")
        p = params[key]
        if p.WhichOneof("parameter_choice") != "int64_param":
            raise invalid(f"invalid value type for '{key}' parameter for tensor '{name}', expected int64_param.")
        values[key] = p.int64_param
    if not has_region:
        return None
    return region, values["shared_memory_offset"], values["shared_memory_byte_size"]


# -- HTTP: /v2/systemsharedmemory/..., /v2/cudasharedmemory/... ---------------------------------------
SETTINGS_BODY_LIMIT = 1 << 20  # a register request is a few fields


def http_routes(shm: SystemSharedMemory) -> list:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from triserve.protocols.transport.bodies import read_body
    from triserve.protocols.transport.json_input import loads_object

    def _json(data: Any) -> Response:
        import orjson

        return Response(orjson.dumps(data), 200, media_type="application/json")

    def _ok() -> Response:
        return Response(b"", 200, media_type="application/json")

    async def system_status(request: Request) -> Response:
        return _json(shm.status(request.path_params.get("region", "")))

    async def system_register(request: Request) -> Response:
        name = request.path_params.get("region", "")
        shm._check_allowed()
        if not name:
            raise invalid("'region name' is necessary to register system shared memory region")
        body = await read_body(request, SETTINGS_BODY_LIMIT)
        data = loads_object(body, "the register request") if body.strip() else {}
        if "key" not in data:
            raise invalid("Shared memory register request has no 'key' field")
        key = data["key"]
        if not isinstance(key, str):
            raise invalid("Unable to parse 'key': expected a string")
        offset = _uint(data, "offset")
        if "byte_size" not in data:
            raise invalid("Shared memory register request has no 'byte_size' field")
        byte_size = _uint(data, "byte_size")
        shm.register(name, key, offset, byte_size)
        return _ok()

    async def system_unregister(request: Request) -> Response:
        shm.unregister(request.path_params.get("region", ""))
        return _ok()

    async def cuda_status_route(request: Request) -> Response:
        return _json(cuda_status(shm, request.path_params.get("region", "")))

    async def cuda_register(request: Request) -> Response:
        name = request.path_params.get("region", "")
        shm._check_allowed()
        if not name:
            raise invalid("'region name' is necessary to register cuda shared memory region")
        raise cuda_register_error(name)

    async def cuda_unregister_route(request: Request) -> Response:
        cuda_unregister(shm, request.path_params.get("region", ""))
        return _ok()

    routes = []
    for kind, status, register, unregister in (
        ("systemsharedmemory", system_status, system_register, system_unregister),
        ("cudasharedmemory", cuda_status_route, cuda_register, cuda_unregister_route),
    ):
        for prefix in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
            routes += [
                Route(prefix + "/status", status, methods=["GET"]),
                Route(prefix + "/register", register, methods=["POST"]),
                Route(prefix + "/unregister", unregister, methods=["POST"]),
            ]
    return routes


# -- gRPC: SystemSharedMemory* and CudaSharedMemory* ------------------------------------------------
def grpc_system_status(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    response = pb.SystemSharedMemoryStatusResponse()
    for region in shm.status(request.name):
        response.regions[region["name"]].CopyFrom(
            pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
        )
    return response


def grpc_system_register(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    shm.register(request.name, request.key, request.offset, request.byte_size)
    return pb.SystemSharedMemoryRegisterResponse()


def grpc_system_unregister(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    shm.unregister(request.name)
    return pb.SystemSharedMemoryUnregisterResponse()


def grpc_cuda_status(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    cuda_status(shm, request.name)
    return pb.CudaSharedMemoryStatusResponse()


def grpc_cuda_register(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    raise cuda_register_error(request.name)


def grpc_cuda_unregister(shm: SystemSharedMemory, request: Any, pb: Any) -> Any:
    cuda_unregister(shm, request.name)
    return pb.CudaSharedMemoryUnregisterResponse()
