"""Triton's trace extension: which requests are traced (`trace_level`, `trace_rate`,
`trace_count`, globally and per model) and where their timelines go: Triton's trace JSON file
(`trace_file`, `log_frequency`), as tritonserver writes it:

    [{"id":1,"model_name":"simple","model_version":1},
     {"id":1,"timestamps":[{"name":"HTTP_RECV_START","ns":...}]}, ...]

One tracer per data plane, shared by the HTTP and gRPC front ends. Settings follow Triton's
TraceManager: a model's setting overrides the fields it names and follows the global setting
for the others; a null value (HTTP) or an empty value list (gRPC) clears a field; the trace file
cannot be changed over the network. Differences: with `log_frequency` 0 each trace is appended
to the file as it completes and the file is a complete JSON array after every trace (Triton
keeps them in memory until it exits); with `log_frequency` N, every N traces go to
`<trace_file>.<index>` as Triton does. With `--trace-config mode=opentelemetry` traces become
OpenTelemetry spans instead (see otel.py).

The TENSORS level (alone or with TIMESTAMPS) adds Triton's tensor activity records, as Triton's
`TraceManager::TraceTensorActivity` (server src/tracer.cc) writes them:

    {"id":1,"activity":"TENSOR_QUEUE_INPUT","tensor":{"name":"INPUT0","data":"0,1,2","shape":"1,3","dtype":"INT32"}}

for each input when the request is queued and TENSOR_BACKEND_OUTPUT for each output of a
response (Triton's core never reports TENSOR_BACKEND_INPUT). "data" is rendered as tracer.cc
streams it: integers in decimal, BOOL as 1/0, FP32/FP64 as C++'s `ostream <<` (printf %g), INT8
and UINT8 as characters (tracer.cc streams them as `char`), BYTES elements as `"..."`, FP16 and
BF16 empty; elements joined by ",", the shape as "1,3". Where tracer.cc would write bytes that are
not valid JSON (control characters, quotes, bytes that are not UTF-8), they are JSON-escaped
(non-UTF-8 bytes as the Latin-1 character of the same value), so that the file always parses.
Without TIMESTAMPS a trace has no model object and no timestamps, as in Triton. Rendering grows
with the tensors, so a front end renders a trace's tensors on a worker thread (`render`) before
it answers (the tensors may be a client's shared memory, which it rewrites after the answer).
The opentelemetry mode does not trace tensors (Triton logs that it does not support them).
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np
import orjson

from triserve.core.trace import TensorRecord, Trace
from triserve.protocols.kserve import otel
from triserve.protocols.transport import offload
from triserve.errors import Code, ServerError, invalid

log = logging.getLogger("triserve")

# Trace files are written here, in the order traces finish, off the event loop.
WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-writer")
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
FIELDS = ("trace_level", "trace_rate", "trace_count", "log_frequency")


@dataclass(frozen=True)
class TraceValues:
    level: tuple[str, ...] = ("OFF",)  # ("OFF",), or TIMESTAMPS and/or TENSORS in that order
    rate: int = 1000
    count: int = -1  # traces still to collect; -1: no limit
    log_frequency: int = 0
    file: str = ""
    mode: str = "triton"  # or opentelemetry
    otel: tuple[tuple[str, str], ...] = ()  # opentelemetry mode's settings (url, resource, bsp_*)

    @property
    def enabled(self) -> bool:
        return self.level != ("OFF",)

    @property
    def timestamps(self) -> bool:
        return "TIMESTAMPS" in self.level

    @property
    def tensors(self) -> bool:
        return "TENSORS" in self.level

    def invalid_reason(self) -> str | None:
        if not self.enabled:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == "triton" and not self.file:
            return "trace file name is not given"
        return None

    def as_settings(self) -> dict[str, Any]:
        """The settings as Triton answers them: a level list, every other value a string."""
        settings: dict[str, Any] = {
            "trace_level": list(self.level),
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
        }
        if self.mode == "triton":
            settings["log_frequency"] = str(self.log_frequency)
            settings["trace_file"] = self.file
        settings["trace_mode"] = self.mode
        if self.mode == "opentelemetry":
            settings.update(dict(self.otel))
        return settings


_ATTRS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}


def parse_config(entries: Iterable[str]) -> TraceValues:
    """`--trace-config` entries, Triton's syntax: `[triton,]SETTING=VALUE` (level, rate, count,
    mode; triton: file, log-frequency). Raises ValueError with the reason."""
    values = TraceValues()
    levels: set[str] = set()
    disabled = False  # `level=OFF` anywhere disables tracing (Triton's explicit_disable_trace)
    for entry in entries:
        mode, _, setting = entry.rpartition(",")
        key, sep, value = setting.partition("=")
        key = key.strip().replace("_", "-")
        value = value.strip()
        if not sep:
            raise ValueError(f"expected [MODE,]SETTING=VALUE, got {entry!r}")
        if mode and mode not in ("triton", "opentelemetry"):
            raise ValueError(f"unknown trace mode {mode!r} in {entry!r}: expected triton or opentelemetry")
        if mode == "opentelemetry":
            key = key.replace("-", "_")
            otel.check_setting(key, value)
            values = replace(values, otel=(*values.otel, (key, value)))
        elif key == "mode":
            if value not in ("triton", "opentelemetry"):
                raise ValueError(f"unknown trace mode {value!r}: expected triton or opentelemetry")
            if value == "opentelemetry":
                otel.check_available()
            values = replace(values, mode=value)
        elif key == "level":  # may be given more than once: the levels add up (Triton's parser)
            level = _LEVEL_WORDS.get(value.lower())
            if level is None:
                raise ValueError(f"invalid value for trace level option: {value}")
            if level == "OFF":
                disabled = True
            else:
                levels.add(level)
        elif key == "rate":
            values = replace(values, rate=_number(key, value, 0, UINT32_MAX))
        elif key == "count":
            values = replace(values, count=_number(key, value, -1, INT32_MAX))
        elif key == "log-frequency":
            values = replace(values, log_frequency=_number(key, value, 0, UINT32_MAX))
        elif key == "file":
            values = replace(values, file=value)
        else:
            raise ValueError(f"unknown trace setting {key!r} in {entry!r}")
    if levels and not disabled:
        values = replace(values, level=_ordered(levels))
    if values.otel and values.mode != "opentelemetry":
        raise ValueError("opentelemetry settings need --trace-config mode=opentelemetry")
    if values.enabled and values.invalid_reason():
        raise ValueError(f"invalid trace setting: {values.invalid_reason()}")
    return values


# Triton's TritonParser::ParseTraceLevelOption (server src/command_line_parser.cc).
_LEVEL_WORDS = {"false": "OFF", "off": "OFF", "true": "TIMESTAMPS", "on": "TIMESTAMPS", "min": "TIMESTAMPS",
                "max": "TIMESTAMPS", "timestamps": "TIMESTAMPS", "tensors": "TENSORS"}


def _ordered(levels: Iterable[str]) -> tuple[str, ...]:
    """The levels in the order Triton lists them (TIMESTAMPS, then TENSORS)."""
    return tuple(level for level in ("TIMESTAMPS", "TENSORS") if level in levels)


def _number(key: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"trace setting {key} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"trace setting {key} must be in [{low}, {high}], got {value}")
    return number


# -- parsing a settings update ---------------------------------------------------------------------
_CLEAR = object()  # a field the update clears (falls back to the global / startup value)


def parse_update(settings: Mapping[str, Any]) -> dict[str, Any]:
    """An update as {field: value or _CLEAR}. Values arrive as Triton's clients send them: HTTP
    JSON strings (or lists of strings for the level; null clears), gRPC value lists (empty
    clears), normalized here to None (clear), a string, or a list of strings."""
    if "trace_file" in settings:
        raise ServerError("trace file location can not be updated through network protocol", Code.UNSUPPORTED)
    update: dict[str, Any] = {}
    for key in FIELDS:
        if key not in settings:
            continue
        value = settings[key]
        if value is None:
            update[key] = _CLEAR
        elif key == "trace_level":
            update[key] = _level(value)
        else:
            update[key] = _setting_number(key, value)
    return update


def _level(value: Any) -> tuple[str, ...]:
    levels = [value] if isinstance(value, str) else value
    if not isinstance(levels, list) or not all(isinstance(v, str) for v in levels):
        raise invalid("Unable to parse 'trace_level': expected an array of strings")
    if "OFF" in levels:
        if len(levels) != 1:
            raise invalid("Expect only one trace level 'OFF' is specified")
        return ("OFF",)
    # As Triton's HTTP and gRPC handlers: the known levels add up, other words are passed over
    # (a list of none of them is refused here, where Triton would leave the level as it was).
    known = _ordered(levels)
    if known:
        return known
    raise invalid(f"Unable to parse 'trace_level': expected 'OFF', 'TIMESTAMPS' or 'TENSORS', got {levels[:4]!r}"[:300])


def _setting_number(key: str, value: Any) -> int:
    if isinstance(value, list):  # gRPC: exactly one value
        if len(value) != 1:
            raise invalid(f"expect only 1 value for '{key}'")
        value = value[0]
    if not isinstance(value, str):
        raise invalid(f"Unable to parse '{key}': expected a string")
    text = value.strip()
    low, high = (-1, INT32_MAX) if key == "trace_count" else (0, UINT32_MAX)
    try:
        number = int(text)
    except ValueError:
        raise invalid(f"Unable to parse '{key}', got: {value[:100]}") from None
    if key == "trace_count" and number < -1:
        raise invalid(f"Unable to parse '{key}'. Expecting value >= -1, got: {value[:100]}")
    if not low <= number <= high:
        raise invalid(f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {value[:100]}")
    return number


# -- trace files ----------------------------------------------------------------------------------
class TraceFile:
    """One trace file: a JSON array kept complete after every write; indexed files for batches."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._started = False
        self._index = itertools.count()

    def append(self, objects: list[bytes]) -> None:
        if not objects:
            return
        with self._lock:
            try:
                if not self._started:
                    with open(self.path, "wb") as f:
                        _write_array(f, b"[", objects)
                    self._started = True
                else:
                    with open(self.path, "r+b") as f:
                        f.seek(-1, os.SEEK_END)  # over the closing bracket
                        _write_array(f, b",", objects)
            except OSError as e:
                log.error("failed writing trace file %s: %s", self.path, e.strerror)

    def write_indexed(self, objects: list[bytes]) -> None:
        if not objects:
            return
        path = f"{self.path}.{next(self._index)}"
        try:
            with open(path, "wb") as f:
                _write_array(f, b"[", objects)
        except OSError as e:
            log.error("failed writing trace file %s: %s", path, e.strerror)


def _write_array(f: Any, opening: bytes, objects: list[bytes]) -> None:
    """`opening`, the objects comma-separated, "]": one write each (a tensor's object may be large)."""
    f.write(opening)
    for i, item in enumerate(objects):
        if i:
            f.write(b",")
        f.write(item)
    f.write(b"]")


@dataclass(eq=False)
class _Scope:
    """A setting in force (global or one model's), with its sampling counters; replaced, not
    changed, by an update (so counters start over, as in Triton)."""

    values: TraceValues
    specified: frozenset[str] = frozenset()  # a model's: the fields it overrides
    seen: int = 0
    remaining: int = -1
    buffered: list[bytes] = field(default_factory=list)  # log_frequency > 0: traces not yet written

    def __post_init__(self) -> None:
        self.remaining = self.values.count


@dataclass(frozen=True)
class _Sink:
    scope: _Scope
    parent: Any = None  # opentelemetry: the caller's span context


class Tracer:
    def __init__(self, defaults: TraceValues = TraceValues(), otel_exporter: Any = None) -> None:
        """`otel_exporter`: where opentelemetry mode's spans go instead of OTLP/HTTP (tests)."""
        self.defaults = defaults
        self._otel = otel.Exporter(defaults.otel, otel_exporter) if defaults.mode == "opentelemetry" else None
        self._global = _Scope(defaults)
        self._models: dict[str, _Scope] = {}
        self._files: dict[str, TraceFile] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._said_no_otel_tensors = False

    # -- settings -----------------------------------------------------------------------------
    def settings(self, model: str = "") -> dict[str, Any]:
        scope = self._scope(model)
        settings = scope.values.as_settings()
        settings["trace_count"] = str(scope.remaining)  # as Triton: what is left to collect
        return settings

    def _scope(self, model: str) -> _Scope:
        return self._models.get(model, self._global) if model else self._global

    def update(self, model: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Apply an update (Triton's rules); returns the settings now in force for `model`."""
        update = parse_update(settings)
        with self._lock:
            if not model:
                values = _apply(self._global.values, self.defaults, update)
                _check_valid(values)
                # Models overriding some fields follow the new global values for the others.
                models = {}
                for name, scope in self._models.items():
                    mine = {k: getattr(scope.values, _ATTRS[k]) for k in scope.specified}
                    models[name] = _Scope(_apply(values, values, mine), scope.specified)
                    _check_valid(models[name].values)
                self._flush(self._global)
                self._global = _Scope(values)
                for name, scope in models.items():
                    self._flush(self._models[name])
                    self._models[name] = scope
            elif update:
                old = self._models.get(model)
                specified = set(old.specified if old else ())
                mine = {k: getattr(old.values, _ATTRS[k]) for k in specified} if old else {}
                for key, value in update.items():
                    if value is _CLEAR:
                        specified.discard(key)
                        mine.pop(key, None)
                    else:
                        specified.add(key)
                        mine[key] = value
                if old is not None:
                    self._flush(old)
                if not specified:
                    self._models.pop(model, None)
                else:
                    values = _apply(self._global.values, self._global.values, mine)
                    _check_valid(values)
                    self._models[model] = _Scope(values, frozenset(specified))
        return self.settings(model)

    # -- tracing ------------------------------------------------------------------------------
    def sample(self, model: str, carrier: Mapping[str, str] | None = None) -> Trace | None:
        """A Trace for this request when the model's setting samples it (every rate-th request,
        until count traces were taken), else None. `carrier`: the request's headers, whose W3C
        traceparent (opentelemetry mode) traces the request whatever the rate."""
        scope = self._scope(model)
        values = scope.values
        if not values.enabled or values.invalid_reason():
            return None
        parent = self._otel.parent(carrier) if self._otel is not None else None
        with self._lock:
            if parent is None:
                if scope.remaining == 0:
                    return None
                scope.seen += 1
                if scope.seen % values.rate:
                    return None
                if scope.remaining > 0:
                    scope.remaining -= 1
            tensors = values.tensors and values.mode == "triton"
            if values.tensors and not tensors and not self._said_no_otel_tensors:
                self._said_no_otel_tensors = True  # Triton logs this for each tensor
                log.error("Tensor level tracing is not supported by the mode: %s", values.mode)
            return Trace(next(self._ids), model_name=model, sink=_Sink(scope, parent), tensors=tensors)

    def finish(self, trace: Trace | None, last: str | None = None) -> None:
        """The request is answered: stamp `last` and write the trace where its setting says."""
        if trace is None:
            return
        if last:
            trace.stamp(last)
        sink: _Sink = trace.sink
        if self._otel is not None:
            self._otel.export(trace, sink.parent)
            return
        scope = sink.scope
        objects = trace_json(trace, scope.values.timestamps)
        file = self._file(scope.values.file)
        if scope.values.log_frequency == 0:
            file.append(objects)
            return
        with self._lock:
            scope.buffered.append(b",".join(objects))
            if len(scope.buffered) < scope.values.log_frequency:
                return
            batch, scope.buffered = scope.buffered, []
        file.write_indexed(batch)

    def finish_later(self, trace: Trace, last: str | None = None) -> None:
        """finish(), with `last` stamped now and the file written on the trace writer's thread
        (for callers on the event loop)."""
        if last:
            trace.stamp(last)
        WRITER.submit(self.finish, trace)

    async def render(self, trace: Trace) -> None:
        """Render the trace's tensor records now (on a worker thread once they are large), before
        the front end answers: the tensors may be a client's shared memory, which the client
        may rewrite once answered."""
        pending = [r for r in trace.tensor_records if r.rendered is None]
        if pending:
            elements = sum(int(getattr(r.array, "size", 1)) for r in pending)
            await offload.run(elements * RENDER_COST, render_records, trace.id, pending)

    def _file(self, path: str) -> TraceFile:
        with self._lock:
            found = self._files.get(path)
            if found is None:
                found = self._files[path] = TraceFile(path)
            return found

    def _flush(self, scope: _Scope) -> None:
        """Traces a replaced setting still holds go to an indexed file (Triton does this too)."""
        if scope.buffered:
            batch, scope.buffered = scope.buffered, []
            path = scope.values.file
            found = self._files.get(path)
            if found is None:
                found = self._files[path] = TraceFile(path)
            found.write_indexed(batch)

    def close(self) -> None:
        with self._lock:
            self._flush(self._global)
            for scope in self._models.values():
                self._flush(scope)
        if self._otel is not None:
            self._otel.close()


def _apply(base: TraceValues, fallback: TraceValues, update: Mapping[str, Any]) -> TraceValues:
    changes = {}
    for key, value in update.items():
        attr = _ATTRS[key]
        changes[attr] = getattr(fallback, attr) if value is _CLEAR else value
    return replace(base, **changes)


def _check_valid(values: TraceValues) -> None:
    reason = values.invalid_reason()
    if values.enabled and reason:
        raise invalid(f"Attempting to set invalid trace setting :{reason}")


def trace_json(trace: Trace, timestamps: bool = True) -> list[bytes]:
    """Triton's objects for one trace: its model, then one object per timestamp and tensor
    activity in time order (without `timestamps`, the TENSORS level alone: only the tensors)."""
    objects = []
    events: list[tuple[int, int, Any]] = []
    if timestamps:
        head: dict[str, Any] = {"id": trace.id, "model_name": trace.model_name}
        try:
            head["model_version"] = int(trace.model_version)
        except ValueError:
            head["model_version"] = -1
        if trace.request_id:
            head["request_id"] = trace.request_id
        objects.append(orjson.dumps(head))
        events += [(ns, 0, name) for name, ns in trace.timestamps]
    # At one instant the queued inputs follow QUEUE_START, and outputs come before what follows them.
    events += [(r.ns, 1 if r.activity == "TENSOR_QUEUE_INPUT" else -1, r) for r in trace.tensor_records]
    render_records(trace.id, [r for r in trace.tensor_records if r.rendered is None])
    for ns, _, event in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(event, TensorRecord):
            objects.append(event.rendered)
        else:
            objects.append(orjson.dumps({"id": trace.id, "timestamps": [{"name": event, "ns": ns}]}))
    return objects


# -- tensor records: what Triton's TraceManager::TraceTensorActivity writes (server src/tracer.cc) ------
_CHUNK = 1 << 16  # elements turned into text at a time (bounds the temporary Python objects)
# An element's text costs about what offload.run's threshold counts for 64 bytes of other work:
# up to 1024 elements are rendered at once, more on a worker thread.
RENDER_COST = 64
_INTEGERS = frozenset({"UINT16", "UINT32", "UINT64", "INT16", "INT32", "INT64"})
_CHARACTERS = frozenset({"UINT8", "INT8"})  # tracer.cc streams uint8_t/int8_t, which ostream writes as a char


def render_records(trace_id: int, records: Iterable[TensorRecord]) -> None:
    """Turn each record into its JSON object (and drop the reference to its tensor)."""
    for record in records:
        array = np.asarray(record.array)
        try:
            data = tensor_data(record.datatype, array)
        except Exception:  # never fails the request it traces (Triton logs and leaves the record)
            log.exception("failed rendering tensor '%s' of trace %d", record.name, trace_id)
            data = ""
        tensor = {"name": record.name, "data": data, "shape": ",".join(str(d) for d in array.shape),
                  "dtype": record.datatype}
        try:
            record.rendered = orjson.dumps({"id": trace_id, "activity": record.activity, "tensor": tensor})
        except orjson.JSONEncodeError:  # text with lone surrogates: written as escapes
            tensor = {k: v.encode("utf-8", "backslashreplace").decode() for k, v in tensor.items()}
            record.rendered = orjson.dumps({"id": trace_id, "activity": record.activity, "tensor": tensor})
        record.array = None


def tensor_data(datatype: str, array: np.ndarray) -> str:
    """A tensor's "data" as tracer.cc renders it, elements joined by ","."""
    flat = array.reshape(-1)
    if datatype in ("FP16", "BF16"):
        return ""  # tracer.cc: "already handled as binary blobs", nothing written
    if datatype in _CHARACTERS:
        text = np.ascontiguousarray(flat).view(np.uint8).tobytes().decode("latin-1")
        return ",".join(text)
    if datatype == "BOOL":
        convert = _bool_text
    elif datatype in _INTEGERS:
        convert = str
    elif datatype in ("FP32", "FP64"):
        convert = _float_text
    elif datatype == "BYTES":
        convert = _bytes_text
    else:
        return ""
    pieces = []
    for start in range(0, flat.size, _CHUNK):
        pieces.append(",".join(map(convert, flat[start : start + _CHUNK].tolist())))
    return ",".join(pieces)


def _bool_text(value: Any) -> str:
    return "1" if value else "0"  # a bool streamed without std::boolalpha


def _float_text(value: float) -> str:
    """C++ `ostream << float|double` with the default precision: printf's %g (glibc: "-nan")."""
    if value != value:
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return "%g" % value


def _bytes_text(value: Any) -> str:
    """One BYTES element: tracer.cc writes it between escaped quotes, `\"...\"`, as it is."""
    if isinstance(value, str):
        return f'"{value}"'
    raw = bytes(value)
    try:
        return f'"{raw.decode("utf-8")}"'
    except UnicodeDecodeError:
        return f'"{raw.decode("latin-1")}"'


# -- one tracer per data plane ---------------------------------------------------------------------
_TRACERS: weakref.WeakKeyDictionary[Any, Tracer] = weakref.WeakKeyDictionary()


def tracer(dataplane: object, defaults: TraceValues | None = None) -> Tracer:
    """The data plane's tracer (made on first use), shared by its HTTP and gRPC front ends."""
    found = _TRACERS.get(dataplane)
    if found is None:
        found = _TRACERS[dataplane] = Tracer(defaults or TraceValues())
        atexit.register(found.close)  # traces held for log_frequency go to their file
    return found


def unknown_model(model: str) -> ServerError:
    return invalid(f"Request for unknown model : {model}")


# -- HTTP: /v2/trace/setting, /v2/models/{model}/trace/setting -------------------------------------------
SETTINGS_BODY_LIMIT = 1 << 20


def http_routes(tracer: Tracer, check_model) -> list:
    """`check_model(name)` raises unless the model is ready."""
    import orjson
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from triserve.protocols.transport.bodies import read_body
    from triserve.protocols.transport.json_input import loads_object

    async def setting(request: Request) -> Response:
        model = request.path_params.get("model", "")
        if model:
            try:
                check_model(model)
            except ServerError:
                raise unknown_model(model) from None
        if request.method == "POST":
            body = await read_body(request, SETTINGS_BODY_LIMIT)
            data = loads_object(body, "the trace setting request") if body.strip() else {}
            tracer.update(model, data)
        return Response(orjson.dumps(tracer.settings(model)), 200, media_type="application/json")

    return [
        Route("/v2/trace/setting", setting, methods=["GET", "POST"]),
        Route("/v2/models/{model}/trace/setting", setting, methods=["GET", "POST"]),
    ]


# -- gRPC: TraceSetting ------------------------------------------------------------------------------------
def grpc_setting(tracer: Tracer, check_model, request: Any, pb: Any) -> Any:
    model = request.model_name
    if model:
        try:
            check_model(model)
        except ServerError:
            raise unknown_model(model) from None
    if request.settings:
        # An empty value list clears a field (as null does over HTTP).
        tracer.update(model, {k: (list(v.value) or None) for k, v in request.settings.items()})
    response = pb.TraceSettingResponse()
    for key, value in tracer.settings(model).items():
        response.settings[key].value.extend(value if isinstance(value, list) else [value])
    return response


# -- the trace of the request being handled (a front end's handler sets it) -------------------------------
CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("triserve_trace", default=None)


def stamp_current(name: str) -> None:
    sampled = CURRENT.get()
    if sampled is not None:
        sampled.stamp(name)
