"""Logging set-up with flood protection: a message repeated faster than a few times a minute (accept()
failing on EMFILE, say, thousands of times a second) is suppressed and later counted in one line."""

from __future__ import annotations

import json
import logging
import time

from service import request_id

WINDOW_S = 10.0
BURST = 5
# Loggers whose every record is wanted: one line per request, asked for with LOG_LEVEL=DEBUG.
UNLIMITED = frozenset({"qwen3_embed.access"})


class RepeatLimiter(logging.Filter):
    """At most BURST records per (logger, message template) in each WINDOW_S; the next record after a
    suppression says how many were dropped. Tracebacks of suppressed records are dropped with them."""

    def __init__(self, window_s: float = WINDOW_S, burst: int = BURST) -> None:
        super().__init__()
        self.window_s = window_s
        self.burst = burst
        self._seen: dict[tuple[str, str], tuple[float, int, int]] = {}  # -> (window start, count, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in UNLIMITED:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        start, count, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar messages suppressed in the last {self.window_s:.0f} s]"
            start, count, dropped = now, 0, 0
        if count >= self.burst:
            self._seen[key] = (start, count, dropped + 1)
            return False
        self._seen[key] = (start, count + 1, dropped)
        if len(self._seen) > 10_000:  # messages are templates, so this only trims pathological growth
            self._seen.clear()
        return True


class RequestIdFilter(logging.Filter):
    """Tags each record with the id of the request being served where it was logged (service/request_id.py):
    `request_id` ("" outside requests) and `request_tag` (" [request_id=...]" or "") for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.current.get()
        record.request_id = rid
        record.request_tag = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines (Loki, Cloud Logging) that parse structure."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_tag)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    limiter = RepeatLimiter()
    tagger = RequestIdFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limiter)
        handler.addFilter(tagger)  # after the limiter: only records that are written are tagged
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
