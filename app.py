"""chat-api: REST routes and WebSocket handlers. Wiring only; behaviour lives in chalicelib/."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from chalice.app import (
    Chalice,
    CloudWatchEvent,
    CognitoUserPoolAuthorizer,
    Rate,
    Response,
    SQSEvent,
    WebsocketEvent,
)

from chalicelib.errors import ChatError, Unauthorized
from chalicelib.logs import install_log_redaction
from chalicelib.rest import cors_headers, error_response, query_params
from chalicelib.wiring import connections_endpoint, get_fanout_worker, get_service

app = Chalice(app_name="chat-api")
# Chalice still files its WebSocket support under experimental features.
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.log.setLevel(logging.INFO)
# Connect URLs carry ID tokens; no log line of this process may repeat one.
install_log_redaction()

# Declared at import because Chalice reads it when packaging; the stage's
# environment (in .chalice/config.json) is applied before this module loads.
cognito = CognitoUserPoolAuthorizer(
    "CognitoUserPool",
    provider_arns=[
        os.environ.get(
            "COGNITO_USER_POOL_ARN",
            "arn:aws:cognito-idp:us-east-1:000000000000:userpool/us-east-1_EXAMPLE",
        )
    ],
    header="Authorization",
)


def caller() -> str:
    """The signed-in user, from the claims API Gateway's Cognito authorizer verified."""
    request = app.current_request
    claims = (request.context.get("authorizer") or {}).get("claims") or {} if request else {}
    username = claims.get("cognito:username")
    if not isinstance(username, str) or not username:
        raise Unauthorized("Unauthorized")
    return username


def api(path: str, method: str) -> Callable[[Callable[..., Any]], Any]:
    """Declare a Cognito-protected route whose domain errors become ``{"Code", "Message"}``."""

    def register(view: Callable[..., Any]) -> Any:
        @functools.wraps(view)
        def guarded(**path_params: str) -> Any:
            try:
                get_service().admit(caller(), write=method != "GET")
                return view(**path_params)
            except ChatError as error:
                return error_response(error)

        return app.route(path, methods=[method], authorizer=cognito)(guarded)

    return register


@app.middleware("http")
def add_cors_headers(event: Any, get_response: Callable[[Any], Response]) -> Response:
    response = get_response(event)
    origin = (event.headers or {}).get("origin")
    response.headers.update(cors_headers(origin))
    return response


# --- REST ---------------------------------------------------------------------------------


def raw_body() -> str | bytes | None:
    request = app.current_request
    return request.raw_body if request else None


@api("/conversation", "POST")
def create_conversation() -> Any:
    return get_service().create_conversation(caller(), raw_body())


@api("/conversation/direct/{userId}", "GET")
def get_user_direct_conversation(userId: str) -> Any:  # noqa: N803 - the contract's name
    return get_service().direct_conversation(caller(), userId)


@api("/conversations", "GET")
def get_user_conversations() -> Any:
    page = get_service().list_conversations(caller(), query_params(app.current_request))
    headers: dict[str, str | list[str]] = {"Content-Type": "application/json"}  # the body is JSON text already
    if page.next_cursor:
        headers["X-Next-Cursor"] = page.next_cursor
    return Response(body=page.body, headers=headers)


@api("/conversations/{conversationId}", "GET")
def get_conversation(conversationId: str) -> Any:  # noqa: N803
    return get_service().get_conversation(caller(), conversationId)


@api("/conversations/{conversationId}/messages", "GET")
def get_conversation_messages(conversationId: str) -> Any:  # noqa: N803
    params = query_params(app.current_request)
    return get_service().conversation_messages(caller(), conversationId, params)


@api("/conversations/{conversationId}/changes", "GET")
def get_conversation_changes(conversationId: str) -> Any:  # noqa: N803
    return get_service().conversation_changes(caller(), conversationId, query_params(app.current_request))


@api("/conversations/{conversationId}/participants", "GET")
def get_conversation_participants(conversationId: str) -> Any:  # noqa: N803
    return get_service().conversation_participants(caller(), conversationId)


@api("/presence", "GET")
def get_presence() -> Any:
    return get_service().presence(caller(), query_params(app.current_request))


# --- Groups (CONTRACT.md section 6) -------------------------------------------------------


@api("/conversations/{conversationId}/participants", "POST")
def add_participants(conversationId: str) -> Any:  # noqa: N803
    return get_service().add_participants(caller(), conversationId, raw_body())


@api("/conversations/{conversationId}/participants/{userId}", "DELETE")
def remove_participant(conversationId: str, userId: str) -> Any:  # noqa: N803
    return get_service().remove_participant(caller(), conversationId, userId)


@api("/conversations/{conversationId}/participants/{userId}", "PATCH")
def set_participant_role(conversationId: str, userId: str) -> Any:  # noqa: N803
    return get_service().set_participant_role(caller(), conversationId, userId, raw_body())


@api("/conversations/{conversationId}", "PATCH")
def rename_conversation(conversationId: str) -> Any:  # noqa: N803
    return get_service().rename_conversation(caller(), conversationId, raw_body())


@api("/conversations/{conversationId}/settings", "PUT")
def update_conversation_settings(conversationId: str) -> Any:  # noqa: N803
    return get_service().update_settings(caller(), conversationId, raw_body())


@api("/conversations/{conversationId}/members", "GET")
def get_conversation_members(conversationId: str) -> Any:  # noqa: N803
    page = get_service().conversation_members(caller(), conversationId, query_params(app.current_request))
    headers: dict[str, str | list[str]] = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
    return Response(body=page.items, headers=headers)


# CORS preflights carry no token, so they have their own open OPTIONS routes.
for _path in (
    "/conversation",
    "/conversation/direct/{userId}",
    "/conversations",
    "/conversations/{conversationId}",
    "/conversations/{conversationId}/messages",
    "/conversations/{conversationId}/participants",
    "/conversations/{conversationId}/participants/{userId}",
    "/conversations/{conversationId}/settings",
    "/conversations/{conversationId}/members",
    "/presence",
    "/conversations/{conversationId}/changes",
):
    app.route(_path, methods=["OPTIONS"], name=f"preflight{_path.replace('/', '_')}")(
        lambda **_params: Response(body="", status_code=204)
    )


# --- WebSocket ----------------------------------------------------------------------------


@app.on_ws_connect()
def connect(event: WebsocketEvent) -> Response:
    params = event.to_dict().get("queryStringParameters") or {}
    try:
        endpoint = connections_endpoint(event.domain_name, event.stage)
        get_service().connect(event.connection_id, params.get("Authorization"), endpoint)
    except ChatError as error:
        return Response(body={"message": error.message}, status_code=error.status)
    return Response(body="", status_code=200)


@app.on_ws_message()
def message(event: WebsocketEvent) -> None:
    endpoint = connections_endpoint(event.domain_name, event.stage)
    get_service().handle_frame(event.connection_id, event.to_dict().get("body"), endpoint)


@app.on_ws_disconnect()
def disconnect(event: WebsocketEvent) -> None:
    get_service().disconnect(event.connection_id, connections_endpoint(event.domain_name, event.stage))


# --- Queued fan-out -----------------------------------------------------------------------


# The packaged template points this at the stack's own queue and turns on ReportBatchItemFailures
# (.chalice/merge-template.json); five workers push faster than the default account budget lets them.
@app.on_sqs_message(queue="chat-api-fanout", batch_size=10, name="fanout_worker", maximum_concurrency=5)
def fanout_worker(event: SQSEvent) -> dict[str, Any]:
    return get_fanout_worker().handle_event(event.to_dict(), event.context)


# --- Presence sweep -----------------------------------------------------------------------


# A connection that expires has no $disconnect: this finds users whose last one did and tells their peers
# (chalicelib/signals.py). Locally, local/server.py runs it on a timer.
@app.schedule(Rate(1, unit=Rate.MINUTES), name="presence_sweep")
def presence_sweep(event: CloudWatchEvent) -> dict[str, int]:
    return {"offline": get_service().sweep_presence()}
