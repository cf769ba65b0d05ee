"""How `triserve serve` logs: text lines, or one JSON object per line (python-json-logger), with
the fields a record carries (the request log's method, path, status, ...) as keys."""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def handler(format: str = "text") -> logging.Handler:
    """A stderr handler writing `format`: text or json."""
    result = logging.StreamHandler()
    if format == "json":
        result.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        result.setFormatter(logging.Formatter(TEXT_FORMAT))
    return result


def configure(level: str, format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[handler(format)])
