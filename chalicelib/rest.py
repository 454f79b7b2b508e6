"""What every REST response shares: the error body and the CORS headers."""

from __future__ import annotations

import math
from typing import Any

from chalice.app import Request, Response

from chalicelib.config import get_settings
from chalicelib.errors import ChatError, TooManyRequests

ALLOWED_METHODS = "GET,POST,PUT,PATCH,DELETE,OPTIONS"
ALLOWED_HEADERS = "Authorization,Content-Type"


def error_response(error: ChatError) -> Response:
    """Chalice's own error shape, so clients see one format: {"Code", "Message"}.

    The one place a domain error becomes an HTTP answer; a rate limit also says when to retry.
    """
    headers: dict[str, str | list[str]] = {}
    if isinstance(error, TooManyRequests) and error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return Response(body={"Code": error.code, "Message": error.message}, status_code=error.status, headers=headers)


def cors_headers(origin: str | None) -> dict[str, str]:
    """CORS headers for a response to ``origin``.

    The allowed origin is echoed back; any other (or none) gets the first configured
    origin, which a browser will not match, so it refuses the response as it should.
    """
    allowed = get_settings().cors_allowed_origins
    allow_origin = origin if origin in allowed else (allowed[0] if allowed else "null")
    return {
        "Access-Control-Allow-Origin": allow_origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Expose-Headers": "X-Next-Cursor,Retry-After",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def query_params(request: Request | None) -> dict[str, str]:
    """The query string as plain strings (the last value wins for a repeated name)."""
    params: Any = request.query_params if request is not None else None
    if not params:
        return {}
    return {name: params.getlist(name)[-1] for name in params}
