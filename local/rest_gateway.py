"""The HTTP side of the local server: the app's REST API as API Gateway serves it, plus what exists only locally.

One port answers, in this order:

- ``/@connections/{id}``: API Gateway's management API (``connections_api``), so the app's own push client pushes
  through it to the real sockets;
- ``/_local/...``: the identity provider standing in for Cognito (``POST /_local/token``, the JWKS) and the web
  client's configuration. These routes exist only here, never in AWS;
- the static web client in ``local/web`` (``GET /`` and its files);
- everything else: the app's REST routes through Chalice's ``LocalGateway``, with one change. Chalice's local
  Cognito authorizer decodes the token without checking its signature; :class:`CognitoAuthorizer` verifies it
  with the app's own ``TokenVerifier`` (the code path of the WebSocket ``$connect``) and refuses with 401 before
  any handler runs, as API Gateway's Cognito authorizer does.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chalice.app import Chalice, CognitoUserPoolAuthorizer
from chalice.config import Config
from chalice.local import (
    LambdaContext,
    LocalGateway,
    LocalGatewayAuthorizer,
    LocalGatewayException,
    NotAuthorizedError,
)

from chalicelib.errors import BadRequest, ChatError, Unauthorized
from chalicelib.rest import cors_headers
from chalicelib.validation import parse_json_object, parse_user_id
from local.connections_api import (
    MAX_REQUEST_BYTES,
    BodyTooLarge,
    ConnectionsHTTPServer,
    ConnectionSink,
    ConnectionsRequestHandler,
    MalformedBody,
    SigningKey,
)
from local.identity import LocalIdentityProvider

log = logging.getLogger(__name__)

Claims = dict[str, Any]
Verify = Callable[[str | None], Claims]
Headers = dict[str, str | list[str]]

#: Local tokens last as long as Cognito's ID tokens.
TOKEN_TTL_SECONDS = 3600
_CONNECTIONS_PATH = "/@connections/"
_JSON = "application/json"


# -- REST: Chalice's LocalGateway with a real token check -------------------------------------------------------


def gateway_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """Claims as API Gateway's Cognito authorizer hands them to a REST handler: every value a string, and
    ``exp``/``iat`` as dates (``Tue Nov 28 10:33:11 UTC 2026``)."""
    shaped: dict[str, str] = {}
    for name, value in claims.items():
        if name in ("exp", "iat") and isinstance(value, int | float):
            shaped[name] = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(value))
        elif isinstance(value, bool):
            shaped[name] = "true" if value else "false"
        elif isinstance(value, list):
            shaped[name] = "[" + " ".join(str(item) for item in value) + "]"
        else:
            shaped[name] = str(value)
    return shaped


def unauthorized_body() -> bytes:
    return json.dumps({"Code": "Unauthorized", "Message": "Unauthorized"}).encode()


class CognitoAuthorizer(LocalGatewayAuthorizer):
    """Checks a Cognito-protected route's token with ``verify`` (signature included) before the handler runs."""

    def __init__(self, app: Chalice, verify: Verify) -> None:
        super().__init__(app)
        self._verify = verify

    def authorize(
        self, raw_path: str, lambda_event: dict[str, Any], lambda_context: LambdaContext
    ) -> tuple[dict[str, Any], LambdaContext]:
        route = self._route_for_event(lambda_event)
        authorizer = route.authorizer if route is not None else None
        if not isinstance(authorizer, CognitoUserPoolAuthorizer):
            return super().authorize(raw_path, lambda_event, lambda_context)
        headers = lambda_event.get("headers") or {}
        header_name = str(getattr(authorizer, "_header", "Authorization")).lower()
        try:
            claims = self._verify(headers.get(header_name))
        except Unauthorized:
            refusal: Headers = {
                "x-amzn-RequestId": lambda_context.aws_request_id,
                "x-amzn-ErrorType": "UnauthorizedException",
                **cors_headers(headers.get("origin")),
            }
            raise NotAuthorizedError(refusal, unauthorized_body()) from None
        lambda_event["requestContext"]["authorizer"] = {"claims": gateway_claims(claims)}
        return lambda_event, lambda_context


class ApiGateway(LocalGateway):
    """Chalice's ``LocalGateway``, with the verifying authorizer and API Gateway's full REST event shape."""

    def __init__(self, app: Chalice, config: Config, verify: Verify, *, domain_name: str, stage: str) -> None:
        super().__init__(app, config)
        self._authorizer = CognitoAuthorizer(app, verify)
        self._domain_name = domain_name
        self._stage = stage

    def _generate_lambda_event(
        self, method: str, path: str, headers: dict[str, Any], body: bytes | None
    ) -> dict[str, Any]:
        event = super()._generate_lambda_event(method, path, headers, body)
        now = time.time()
        request_id = str(uuid.uuid4())
        context = event["requestContext"]
        context.update(
            stage=self._stage,
            requestId=request_id,
            extendedRequestId=request_id,
            apiId="local",
            accountId="000000000000",
            domainName=self._domain_name,
            protocol="HTTP/1.1",
            requestTime=time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            requestTimeEpoch=int(now * 1000),
        )
        context["identity"]["userAgent"] = event["headers"].get("user-agent", "")
        multi_query = event.get("multiValueQueryStringParameters")
        event.update(
            resource=context["resourcePath"],
            path=context["path"],
            httpMethod=method,
            queryStringParameters={name: values[-1] for name, values in multi_query.items()} if multi_query else None,
            multiValueHeaders={name: [value] for name, value in event["headers"].items()},
        )
        event.setdefault("isBase64Encoded", False)
        if isinstance(event.get("body"), bytes):
            # API Gateway hands a Lambda text bodies as strings.
            try:
                event["body"] = event["body"].decode("utf-8")
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(event["body"]).decode("ascii")
                event["isBase64Encoded"] = True
        return event


# -- local-only routes -------------------------------------------------------------------------------------------


class LocalRoutes:
    """``/_local/...``: mint tokens, publish their keys, tell the web client where the WebSocket API is."""

    def __init__(self, identity: LocalIdentityProvider, config: Mapping[str, str]) -> None:
        self._identity = identity
        self._config = dict(config)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON body for a ``/_local`` request."""
        if path == "/_local/token":
            if method != "POST":
                return 405, {"Code": "MethodNotAllowed", "Message": "Use POST"}
            try:
                username = self.parse_username(body)
            except ChatError as error:
                return error.status, {"Code": error.code, "Message": error.message}
            token = self._identity.mint_id_token(username, ttl_seconds=TOKEN_TTL_SECONDS)
            log.info("minted a token for %r", username)
            return 200, {"idToken": token}
        if method not in ("GET", "HEAD"):
            return 405, {"Code": "MethodNotAllowed", "Message": "Use GET"}
        if path == "/_local/.well-known/jwks.json":
            return 200, self._identity.jwks()
        if path == "/_local/config":
            return 200, self._config
        return 404, {"Code": "NotFound", "Message": "Not found"}

    @staticmethod
    def parse_username(body: bytes) -> str:
        """``{"username": ...}``: the app's own user-id rules, and no control characters at all."""
        username = parse_user_id(parse_json_object(body, max_bytes=4096).get("username"), "username")
        if any(unicodedata.category(char) == "Cc" for char in username):
            raise BadRequest("username must not contain control characters")
        return username


class StaticFiles:
    """The web client's files, by URL path. The set is fixed at start-up, so no path can reach outside it."""

    _TYPES = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".svg": "image/svg+xml",
    }

    def __init__(self, directory: Path) -> None:
        files = sorted(path for path in directory.iterdir() if path.is_file() and not path.name.startswith("."))
        self._files = {f"/{path.name}": path for path in files}
        if "/index.html" in self._files:
            self._files["/"] = self._files["/index.html"]

    def find(self, url_path: str) -> Path | None:
        return self._files.get(url_path)

    def content_type(self, path: Path) -> str:
        return self._TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


# -- the HTTP server ----------------------------------------------------------------------------------------------


class HttpGateway(ConnectionsHTTPServer):
    """The local server's HTTP port, on a socket bound beforehand (so a busy port is found before anything starts).

    ``sink`` may be replaced once the WebSocket side runs; ``start()``/``stop()`` run it on a daemon thread.
    """

    def __init__(
        self,
        sock: socket.socket,
        sink: ConnectionSink,
        *,
        signing_key: SigningKey,
        api: ApiGateway,
        local_routes: LocalRoutes,
        static: StaticFiles,
    ) -> None:
        self._listening = sock
        self.api = api
        self.local_routes = local_routes
        self.static = static
        self._thread: threading.Thread | None = None
        host, port = sock.getsockname()[:2]
        super().__init__((host, port), sink, GatewayRequestHandler, signing_key=signing_key)

    def server_bind(self) -> None:
        """Adopt the socket bound beforehand instead of binding a new one."""
        self.socket.close()
        self.socket = self._listening
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def server_activate(self) -> None:
        """Already listening."""

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="http-gateway", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
        self.drop_open_connections()


class GatewayRequestHandler(ConnectionsRequestHandler):
    """Routes one HTTP request to ``@connections``, ``/_local``, a static file or the REST API."""

    server: HttpGateway

    def _route(self) -> None:
        path = urlsplit(self.path).path
        if _CONNECTIONS_PATH in path and self.command in ("GET", "POST", "DELETE"):
            handler = {
                "GET": ConnectionsRequestHandler.do_GET,
                "POST": ConnectionsRequestHandler.do_POST,
                "DELETE": ConnectionsRequestHandler.do_DELETE,
            }[self.command]
            handler(self)  # reads and checks its own body: signed, and at most one frame
            return
        body = self._capped_body()
        if body is None:
            return
        if path == "/_local" or path.startswith("/_local/"):
            self._local(path, body)
        elif self.command in ("GET", "HEAD") and (file := self.server.static.find(path)) is not None:
            self._respond(
                200,
                file.read_bytes(),
                {"Content-Type": self.server.static.content_type(file), "Cache-Control": "no-cache"},
            )
        else:
            self._rest(body)

    def _capped_body(self) -> bytes | None:
        """The body, up to API Gateway's limit; ``None`` once a 413 or 400 has been answered.

        An over-long ``Content-Length`` is refused before any of the body is read, a chunked body as soon as its
        running total passes the limit; either way the connection then closes.
        """
        try:
            return self._read_body(MAX_REQUEST_BYTES)
        except BodyTooLarge:
            status, code, message = 413, "PayloadTooLarge", f"Request body must be at most {MAX_REQUEST_BYTES} bytes"
        except MalformedBody:
            status, code, message = 400, "BadRequest", "Malformed request body"
        headers: Headers = {"Content-Type": _JSON, **cors_headers(self.headers.get("Origin"))}
        self._respond(status, json.dumps({"Code": code, "Message": message}).encode(), headers)
        return None

    # One entry point for every method (http.server dispatches to do_<METHOD>), as in Chalice's own handler.
    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_HEAD = _route  # noqa: N815 - http.server names

    def _local(self, path: str, body: bytes) -> None:
        origin = self.headers.get("Origin")
        headers: Headers = {"Content-Type": _JSON, **cors_headers(origin)}
        if self.command == "OPTIONS":  # a browser's preflight for POST /_local/token
            self._respond(204, b"", headers)
            return
        status, payload = self.server.local_routes.handle(self.command, path, body)
        self._respond(status, json.dumps(payload).encode(), headers)

    def _rest(self, body: bytes) -> None:
        headers = dict(self.headers.items())
        try:
            response = self.server.api.handle_request(self.command, self.path, headers, body or None)
        except LocalGatewayException as error:
            error_headers: Headers = {
                "Content-Type": _JSON,
                **cors_headers(self.headers.get("Origin")),
                **error.headers,
            }
            self._respond(error.CODE, error.body or b"", error_headers)
            return
        except Exception:
            log.exception("REST request failed outside the app")
            failure: Headers = {"Content-Type": _JSON, **cors_headers(self.headers.get("Origin"))}
            self._respond(502, b'{"message": "Internal server error"}', failure)
            return
        reply_headers: Headers = {"Content-Type": _JSON}
        reply_headers.update(response.get("headers") or {})
        reply_headers.update(response.get("multiValueHeaders") or {})
        raw = response.get("body")
        if response.get("isBase64Encoded") and isinstance(raw, str):
            payload = base64.b64decode(raw)
        elif isinstance(raw, bytes):
            payload = raw
        else:
            payload = (raw or "").encode("utf-8")
        self._respond(int(response["statusCode"]), payload, reply_headers)

    def _respond(self, status: int, body: bytes, headers: Mapping[str, str | list[str]]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            for item in value if isinstance(value, list) else [value]:
                self.send_header(name, item)
        if self.close_connection:
            self.send_header("Connection", "close")
        bodiless = status in (204, 304) or 100 <= status < 200
        if not bodiless:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not bodiless and self.command != "HEAD":
            self.wfile.write(body)
        log.info("HTTP %s %s %d", self.command, urlsplit(self.path).path, status)
