"""TorchServe's config.properties (`--ts-config`): the keys people set, mapped onto the settings of `triserve serve` (options.py builds the typed options from them).

Precedence as in TorchServe: the command line wins, then the file, then the defaults. A value
counts as given on the command line when it differs from the flag's default.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from triserve.errors import invalid

log = logging.getLogger("triserve")

ADDRESS_KEYS = {
    "inference_address": "torchserve_inference",
    "management_address": "torchserve_management",
    "metrics_address": "torchserve_metrics",
}
_ENV = re.compile(r"\$\$([A-Za-z_][A-Za-z0-9_]*)\$\$")


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties: `key=value` or `key: value`, # and ! comments, backslash continuations."""
    values: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", logical)
        if match:
            values[match.group(1)] = _ENV.sub(lambda m: os.environ.get(m.group(1), ""), match.group(2).strip())
        logical = ""
    return values


def address(value: str, key: str) -> tuple[str, int]:
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme == "https":
        raise invalid(f"{key}={value}: HTTPS listeners are not supported; terminate TLS in front of triserve")
    if parts.scheme != "http" or not parts.hostname:
        raise invalid(f"{key}={value}: expected http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise invalid(f"{key}={value}: invalid port") from None
    return parts.hostname, port if port is not None else 80


def _bool(value: str) -> bool:
    return value.strip().lower() == "true"


def apply(path: Path, settings: dict[str, Any], ports: dict[str, int], default_ports: dict[str, int],
          host: str, default_host: str) -> None:
    """Fill options the command line left at their defaults from the config file at `path`."""
    try:
        values = parse_properties(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise invalid(f"cannot read --ts-config {path}: {e}") from None
    hosts = settings.setdefault("torchserve_hosts", {})
    for key, frontend in ADDRESS_KEYS.items():
        if key in values:
            file_host, file_port = address(values[key], key)
            if ports.get(frontend) == default_ports.get(frontend):
                ports[frontend] = file_port
            if host == default_host:
                hosts[frontend] = file_host
    for key, frontend in (("grpc_inference_port", "torchserve_grpc_inference"),
                          ("grpc_management_port", "torchserve_grpc_management")):
        if key in values and ports.get(frontend) == default_ports.get(frontend):
            try:
                ports[frontend] = int(values[key])
            except ValueError:
                raise invalid(f"{key}={values[key]}: invalid port") from None
    if values.get("model_store") and not settings.get("model_store"):
        settings["model_store"] = values["model_store"]
    snapshot = _snapshot(values, path)  # TorchServe restores a model_snapshot before load_models
    if snapshot and not settings.get("models"):
        settings["models"] = [f"{name}={entry['marName']}" for name, versions in snapshot.items()
                              for entry in versions.values() if entry.get("marName")]
    load_models = values.get("load_models", "").strip()
    if load_models and load_models.lower() not in ("standalone", "n/a") and not settings.get("models"):
        settings["models"] = [m.strip() for m in load_models.split(",") if m.strip()]
    if "default_workers_per_model" in values and settings.get("default_workers_per_model") is None:
        settings["default_workers_per_model"] = _positive(values["default_workers_per_model"], "default_workers_per_model")
    for key in ("max_request_size", "job_queue_size", "token_expiration_min"):
        if key in values and settings.get(key) in (None, _DEFAULTS.get(key)):
            settings[key] = _positive(values[key], key)
    if _bool(values.get("enable_model_api", "false")):
        settings["enable_model_api"] = True
    if values.get("disable_token_authorization", "").strip().lower() == "false":
        settings["enable_token_auth"] = True
    if values.get("models"):
        try:
            models = json.loads(values["models"])
        except ValueError as e:
            raise invalid(f"{path}: 'models' is not valid JSON: {e}") from None
        if not isinstance(models, dict):
            raise invalid(f"{path}: 'models' must be a JSON object of model name -> version -> settings")
        settings["ts_models_config"] = {**snapshot, **models}
    elif snapshot:
        settings["ts_models_config"] = snapshot  # minWorkers, batchSize, maxBatchDelay per version
    if "metrics_mode" in values:
        mode = values["metrics_mode"].strip().lower()
        if mode not in ("prometheus", "log"):
            raise invalid(f"metrics_mode={values['metrics_mode']}: expected prometheus or log")
        settings["metrics_mode"] = mode
    if "metric_time_interval" in values:
        settings["metric_time_interval"] = _positive(values["metric_time_interval"], "metric_time_interval")
    if "allowed_urls" in values:
        log.warning("%s: allowed_urls (regular expressions) is not used; allow exact hosts with --allowed-url-hosts", path)
    unknown = sorted(k for k in values if k not in _KNOWN and k != "allowed_urls")
    if unknown:
        log.warning("%s: keys not used by triserve: %s", path, ", ".join(unknown))


def _snapshot(values: dict[str, str], path: Path) -> dict[str, Any]:
    """config.properties `model_snapshot` (what KServe's TorchServe runtime gives): its models,
    name -> version -> {marName, minWorkers, batchSize, maxBatchDelay, ...}."""
    if not values.get("model_snapshot"):
        return {}
    try:
        snapshot = json.loads(values["model_snapshot"])
    except ValueError as e:
        raise invalid(f"{path}: 'model_snapshot' is not valid JSON: {e}") from None
    models = snapshot.get("models") if isinstance(snapshot, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise invalid(f"{path}: 'model_snapshot' must have \"models\": model name -> version -> settings")
    return models


def _positive(value: str, key: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"{key}={value}: expected an integer") from None
    if number < 0:
        raise invalid(f"{key}={value}: must not be negative")
    return number


_DEFAULTS = {"max_request_size": 6553500, "job_queue_size": 100, "token_expiration_min": 60}
_KNOWN = {*ADDRESS_KEYS, "model_store", "load_models", "default_workers_per_model", "models", "enable_model_api",
          "disable_token_authorization", "model_snapshot", "grpc_inference_port", "grpc_management_port", "metrics_mode", "metric_time_interval", *_DEFAULTS}
