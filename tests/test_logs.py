"""`--log-format`: text lines, or JSON objects carrying each record's fields."""

from __future__ import annotations

import json
import logging

from triserve import logs


def record(**fields) -> logging.LogRecord:
    return logging.getLogger("triserve.access").makeRecord(
        "triserve.access", logging.INFO, __file__, 1, '"%s %s" %d', ("GET", "/v2/health/live", 200), None, extra=fields
    )


def test_json_lines_carry_the_message_and_every_field_of_the_record():
    line = logs.handler("json").format(record(status=200, path="/v2/health/live", latency_ms=0.5, model=""))
    data = json.loads(line)
    assert data["message"] == '"GET /v2/health/live" 200'
    assert (data["levelname"], data["name"]) == ("INFO", "triserve.access")
    assert (data["status"], data["path"], data["latency_ms"], data["model"]) == (200, "/v2/health/live", 0.5, "")
    assert "asctime" in data


def test_text_lines_are_level_logger_and_message():
    line = logs.handler("text").format(record(status=200))
    assert line.endswith(' INFO triserve.access: "GET /v2/health/live" 200')


def test_settings_turn_each_level_on_and_off_and_debug_follows_the_verbose_level():
    settings = logs.Settings()
    settings.start("info")
    passes = lambda level: settings.filter(logging.getLogger("x").makeRecord("x", level, __file__, 1, "m", (), None))  # noqa: E731
    assert [passes(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)] == [False, True, True, True]
    settings.update(log_verbose_level=1, log_warning=False)
    assert [passes(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)] == [True, True, False, True]
    settings.start("error")
    assert settings.as_dict() == {"log_file": "", "log_info": False, "log_warning": False, "log_error": True,
                                  "log_verbose_level": 0, "log_format": "default"}


def test_iso8601_writes_utc_times_in_text_and_json_lines():
    root_level = logging.getLogger().level
    try:
        for format in ("text", "json"):
            handler = logs.handler(format)
            settings = logs.Settings()
            settings.attach(handler)
            settings.update(log_format="ISO8601")
            line = handler.format(record(status=200))
            stamp = json.loads(line)["asctime"] if format == "json" else line.split(" ")[0]
            assert len(stamp) == 20 and stamp[10] == "T" and stamp.endswith("Z"), stamp
            settings.update(log_format="default")
            line = handler.format(record(status=200))
            assert "T" not in (json.loads(line)["asctime"] if format == "json" else line.split(" ")[0])
    finally:
        logging.getLogger().setLevel(root_level)
