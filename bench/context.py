"""What every measurement shares: the loaded dataset, an untimed admin connection, tokens, and the app's handlers
driven with API-Gateway-shaped WebSocket events (as tests/conftest.py drives them)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pg8000.native

from bench.seed import DatasetInfo
from local.identity import LocalIdentityProvider
from local.websocket_gateway import ConnectionContext, websocket_event


@dataclass
class BenchContext:
    info: DatasetInfo
    admin: pg8000.native.Connection
    database_url: str
    identity: LocalIdentityProvider
    redis_prefix: str
    quick: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    scratch_conversations: list[str] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)

    def iterations(self, full: int) -> int:
        """``full`` iterations, or a tenth of them (at least 3) for ``--quick`` runs."""
        return max(3, full // 10) if self.quick else full

    def user(self, label: str) -> str:
        """A user id of this run (scratch data is found and removed by its prefix)."""
        return f"bench-{self.run_id}-{label}"


def ws_event(
    route_key: str, connection_id: str, *, body: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """An API Gateway WebSocket event, as the Lambda receives it (the local server's own builder)."""
    context = ConnectionContext(
        connection_id, time.time(), "127.0.0.1", "bench", "bench.execute-api.us-east-1.amazonaws.com", "bench", "bench"
    )
    query = {"Authorization": [token]} if token is not None else None
    return websocket_event(route_key, context, body=body, query=query)


def connect(ctx: BenchContext, user: str) -> str:
    """Open a connection for ``user`` through the app's real ``$connect`` handler (token verified)."""
    import app as chat_app

    connection_id = f"bench-{ctx.run_id}-{uuid.uuid4().hex[:12]}="
    token = ctx.identity.mint_id_token(user)
    response = chat_app.connect(ws_event("$connect", connection_id, token=token), None)
    if response["statusCode"] != 200:
        raise RuntimeError(f"$connect refused: {response}")
    ctx.connections.append(connection_id)
    return connection_id


def send_frame(connection_id: str, frame: dict[str, Any]) -> None:
    """Deliver one client frame to the app's real ``$default`` handler."""
    import app as chat_app

    chat_app.message(ws_event("$default", connection_id, body=json.dumps(frame)), None)


def cleanup(ctx: BenchContext) -> None:
    """Remove this run's scratch conversations and connections (ours and the baseline's) and Redis keys."""
    ids = ctx.scratch_conversations
    if ids:
        ctx.admin.run("DELETE FROM conversation_table WHERE conversation_id = ANY(CAST(:ids AS uuid[]))", ids=ids)
        ctx.admin.run(
            "DELETE FROM baseline.message_read WHERE message_id IN (SELECT message_id FROM baseline.message"
            " WHERE conversation_id = ANY(CAST(:ids AS uuid[])))",
            ids=ids,
        )
        for table in ("message", "participant", "conversation"):
            ctx.admin.run(
                f"DELETE FROM baseline.{table} WHERE conversation_id = ANY(CAST(:ids AS uuid[]))",  # noqa: S608
                ids=ids,
            )
    if ctx.admin.run("SELECT to_regclass('connection_table') IS NOT NULL")[0][0]:
        ctx.admin.run("DELETE FROM connection_table WHERE connection_id LIKE :pattern", pattern=f"bench-{ctx.run_id}-%")
    from chalicelib.wiring import get_registry

    client = get_registry()._client
    keys = list(client.scan_iter(match=f"{ctx.redis_prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
