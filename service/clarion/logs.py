"""Logging for a pod: one format, and no secret ever reaches a log line.

Browsers send their JWT in ``?token=`` (they cannot set headers on a
WebSocket), and uvicorn logs every WebSocket's path with its query string; at
debug level websockets logs a handshake's headers (cookies, authorization); an
AMQP URL carries a password. ``RedactSecrets`` rewrites both wherever a record
comes from (Clarion, uvicorn, websockets, aio-pika), on every handler.
"""

from __future__ import annotations

import logging
import re
from typing import Any

#: ``token=...`` in a query string (and the api_key/key spellings clients invent).
_QUERY_SECRET = re.compile(r"(?i)\b((?:access_)?token|api_key|apikey|key|password)=[^&\s\"']+")
#: ``scheme://user:password@host``
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
#: ``Authorization: Bearer ...``
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
#: Headers whose whole value is a secret (websockets logs a handshake's headers at debug).
_HEADER_SECRET = re.compile(
    r"(?im)\b((?:set-)?cookie|(?:proxy-)?authorization|x-clarion-signature):[ \t]*[^\r\n]+"
)
REDACTED = "REDACTED"

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def redact(text: str) -> str:
    text = _HEADER_SECRET.sub(lambda m: f"{m.group(1)}: {REDACTED}", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Formats the record's message once, redacted, so no argument carries a secret out."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def setup(level: str) -> None:
    """Clarion's own logging (the root logger), redacted; aiormq's duplicates silenced."""
    logging.basicConfig(level=getattr(logging, level.upper()), format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    # aiormq logs every failed connect at ERROR with its own traceback; the
    # broker loop logs the reason itself, once, in one line.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration, with the redacting filter on its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG}
    config["filters"] = {"redact": {"()": RedactSecrets}}
    config["handlers"] = {
        name: {**handler, "filters": ["redact"]}
        for name, handler in LOGGING_CONFIG["handlers"].items()
    }
    return config
