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
