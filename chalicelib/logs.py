"""Keep tokens out of logs, whoever logs them.

A WebSocket client puts its ID token in the connect URL (``?Authorization=<token>``),
so any log line that quotes an event, a URL or an exception raised while handling
one could carry a credential. ``install_log_redaction()`` wraps the process's log
record factory: every record, from our code or a library's, has its message and
its formatted traceback scrubbed before any handler sees it. What is scrubbed:
anything shaped like a JWT (``eyJ….….…``) and the value of an ``Authorization``
query parameter, header or JSON field.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "[REDACTED]"

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Authorization=…, "Authorization": "…", 'Authorization': '…', Authorization: Bearer …
_AUTHORIZATION = re.compile(
    r"""(?i)(authorization["']?\s*[=:]\s*["']?(?:bearer\s+)?)([^\s&"',;}\]]+)""",
)

_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    """``text`` with tokens replaced by ``[REDACTED]``."""
    text = _JWT.sub(REDACTED, text)
    return _AUTHORIZATION.sub(lambda match: match.group(1) + REDACTED, text)


def _scrub(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call; leave it to the handler to report
        return record
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Scrub every log record of this process from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return _scrub(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed = True
