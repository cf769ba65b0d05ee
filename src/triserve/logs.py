"""How `triserve serve` logs: text lines, or one JSON object per line (python-json-logger), with
the fields a record carries (the request log's method, path, status, ...) as keys."""

from __future__ import annotations

import logging
import threading
import time

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


# -- the running server's log settings (Triton's logging extension: /v2/logging) -------------------
class Settings:
    """What is logged, changeable while the server runs: Triton's log_info, log_warning,
    log_error (each level on or off), log_verbose_level (0: no debug lines; 1 and up: debug
    lines) and log_format ("default", or "ISO8601": UTC timestamps as 2026-01-31T12:00:00Z).
    log_file is where the log goes ("" for stderr), set only at start (--log-file)."""

    def __init__(self) -> None:
        self.log_file = ""
        self.log_info = True
        self.log_warning = True
        self.log_error = True
        self.log_verbose_level = 0
        self.log_format = "default"
        self._handlers: list[logging.Handler] = []
        self._lock = threading.Lock()

    def as_dict(self) -> dict[str, object]:
        return {
            "log_file": self.log_file,
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format,
        }

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return self.log_error
        if record.levelno >= logging.WARNING:
            return self.log_warning
        if record.levelno >= logging.INFO:
            return self.log_info
        return self.log_verbose_level > 0

    def attach(self, handler: logging.Handler) -> None:
        """Let these settings decide what `handler` writes, and how it writes the time."""
        handler.addFilter(self.filter)
        self._handlers.append(handler)
        self._apply()

    def start(self, level: str, log_file: str = "") -> None:
        """The settings --log-level and --log-file give."""
        level = level.lower()
        self.log_file = log_file
        self.log_verbose_level = 1 if level == "debug" else 0
        self.log_info = level in ("debug", "info")
        self.log_warning = level in ("debug", "info", "warning")
        self.log_error = True
        self._apply()

    def update(
        self,
        log_info: bool | None = None,
        log_warning: bool | None = None,
        log_error: bool | None = None,
        log_verbose_level: int | None = None,
        log_format: str | None = None,
    ) -> None:
        """Change what the request names (None: unchanged); values are checked by the caller."""
        with self._lock:
            if log_info is not None:
                self.log_info = log_info
            if log_warning is not None:
                self.log_warning = log_warning
            if log_error is not None:
                self.log_error = log_error
            if log_verbose_level is not None:
                self.log_verbose_level = log_verbose_level
            if log_format is not None:
                self.log_format = log_format
            self._apply()

    def _apply(self) -> None:
        """The root logger lets through the lowest level on (the filter drops those off between)."""
        if self.log_verbose_level > 0:
            level = logging.DEBUG
        elif self.log_info:
            level = logging.INFO
        elif self.log_warning:
            level = logging.WARNING
        else:
            level = logging.ERROR
        if self._handlers:
            logging.getLogger().setLevel(level)
        for handler in self._handlers:
            formatter = handler.formatter
            if formatter is None:
                continue
            if self.log_format == "ISO8601":
                formatter.datefmt = "%Y-%m-%dT%H:%M:%SZ"
                formatter.converter = time.gmtime  # type: ignore[method-assign]
            else:
                formatter.datefmt = None
                formatter.converter = time.localtime  # type: ignore[method-assign]


SETTINGS = Settings()


def configure_runtime(level: str, format: str = "text", log_file: str = "") -> None:
    """As configure(), with the log going to `log_file` when given, under SETTINGS' control."""
    result = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    result.setFormatter(handler(format).formatter)
    logging.basicConfig(level=level.upper(), handlers=[result], force=True)
    SETTINGS.attach(result)
    SETTINGS.start(level, log_file)
