"""Typed settings, read from the environment when first needed.

Nothing here runs at import: ``get_settings()`` builds one ``Settings`` from
``os.environ`` and caches it, and ``reset_settings()`` drops the cache so tests
(and the local server) can change the environment between invocations.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# conversation_table.title's CHECK constraint (sql/0001_initial.sql).
TITLE_CHARS_IN_SCHEMA = 300

PushClientName = Literal["signed", "boto3"]
PUSH_CLIENTS: tuple[PushClientName, ...] = ("signed", "boto3")


@dataclass(frozen=True)
class DatabaseSettings:
    """Where PostgreSQL is and how to log in.

    ``url`` wins when set; otherwise the discrete ``DB_*`` fields are used. With
    ``iam_auth`` the password is an RDS IAM token minted per connection.
    """

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    name: str = "postgres"
    user: str = "postgres"
    password: str | None = None
    iam_auth: bool = False
    ssl: bool = False
    connect_timeout_s: float = 5.0
    # Longer than the server's statement_timeout (sql/0006), so the server cancels a stalled statement first.
    read_timeout_s: float = 6.0


@dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "chat:"
    aws_region: str = "us-east-1"
    cognito_user_pool_id: str = ""
    cognito_app_client_id: str = ""
    # Explicit issuer/JWKS override the Cognito defaults (the local server uses them).
    token_issuer_override: str = ""
    jwks_url_override: str = ""
    # Inline JWKS JSON for Lambdas in a VPC without a NAT route to Cognito.
    jwks_json: str = ""
    # An unknown kid forces a JWKS refetch at most this often (shields Cognito from floods of forged kids).
    jwks_refresh_cooldown_s: float = 30.0
    cors_allowed_origins: tuple[str, ...] = ("http://localhost:4200",)
    max_message_chars: int = 4000
    max_title_chars: int = 300
    max_participants: int = 100
    # Registry entries live this long unless a heartbeat or frame refreshes them.
    connection_ttl_s: int = 660
    # Management API endpoint; empty means https://{domainName}/{stage} from the event.
    connections_endpoint_url: str = ""
    push_concurrency: int = 64
    push_timeout_s: float = 3.0
    # Attempts per push: 429, 5xx and connection errors are retried with exponential backoff and jitter.
    push_max_attempts: int = 3
    # "signed": our lean SigV4 client (the fast path); "boto3": boto3's apigatewaymanagementapi client.
    push_client: PushClientName = "signed"
    # The whole fan-out of one frame ends by then; pushes still running are reported as failed.
    push_deadline_s: float = 5.0
    # The account's push budget (chalicelib/budget.py): one Redis bucket for every push, direct or queued.
    # 0 turns it off. Direct pushes wait at most push_budget_direct_wait_s, then the excess is shed.
    push_budget_per_s: float = 3000.0
    push_budget_burst: int = 1000
    push_budget_direct_wait_s: float = 0.1
    # Queued fan-out (chalicelib/fanout.py): above this many target connections a new message goes through
    # the queue (FANOUT_QUEUE_URL: an SQS URL, or local:<name>; empty: always direct) in shards of
    # fanout_shard_size connections.
    fanout_queue_url: str = ""
    fanout_queue_threshold: int = 500
    fanout_shard_size: int = 200
    # Above this many members (and with a queue), the sending handler reads neither the members nor their
    # connections: it answers the sender and queues one expansion, which the worker turns into the shards,
    # so a send's handler costs the same at any group size (one queue hop more for the others).
    fanout_expand_members: int = 2000
    # Shards older than this are dropped unpushed; each shard's record of pushed connections lives twice as long.
    fanout_max_age_s: float = 3600.0
    # A failed shard comes back after base x 2^(receives - 1) seconds (at most 60), with jitter.
    fanout_retry_base_s: float = 1.0
    # Receives before a shard goes to the dead-letter queue (the local queue's; AWS: FanoutMaxReceiveCount).
    fanout_max_receive_count: int = 5
    # Redis connect/read timeout: how long a registry call may stall before the degraded path runs.
    redis_timeout_s: float = 1.0
    # Redis Cluster (ElastiCache Serverless, cluster-mode-enabled): REDIS_URL names any node or the
    # configuration endpoint, and the client follows the slot map.
    redis_cluster: bool = False
    # Per-user token bucket for send-message, across connections and Lambdas; a rate of 0 turns it off.
    send_rate_per_s: float = 10.0
    send_burst: int = 20
    # Live connections one user may hold; a $connect beyond it is refused (429). 0 turns the cap off.
    max_connections_per_user: int = 10
    # Per-user REST token buckets (chalicelib/limits.py); a rate of 0 turns one off.
    create_conversation_rate_per_minute: float = 30.0
    create_conversation_burst: int = 10
    rest_rate_per_minute: float = 600.0
    rest_burst: int = 100
    # Every REST write (POST, PATCH, PUT, DELETE) also takes from this bucket.
    rest_write_rate_per_minute: float = 120.0
    rest_write_burst: int = 30
    # A push answered 410 this soon after the connection's $connect keeps it (still connecting); 0: never.
    connect_grace_s: float = 10.0
    # Above this many members a read's receipt reaches only the reader's own connections.
    receipts_max_members: int = 100
    # Live signals (chalicelib/signals.py): no typing fan-out above this many members; the typing
    # membership cache's backstop TTL (every membership change invalidates it anyway); users the
    # presence sweep settles per run at most (the rest wait for the next minute).
    typing_max_members: int = 100
    typing_members_ttl_s: int = 300
    presence_sweep_max_users: int = 5000
    # Largest REST body or WebSocket frame the app parses at all.
    max_request_bytes: int = 65536
    # MAC key of list cursors (chalicelib/cursors.py); unset, one is derived from the pool and client ids.
    cursor_secret: str = field(default="", repr=False)

    @property
    def token_issuer(self) -> str:
        if self.token_issuer_override:
            return self.token_issuer_override
        region = self.cognito_user_pool_id.split("_", 1)[0] or self.aws_region
        return f"https://cognito-idp.{region}.amazonaws.com/{self.cognito_user_pool_id}"

    @property
    def jwks_url(self) -> str:
        return self.jwks_url_override or f"{self.token_issuer}/.well-known/jwks.json"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on", "require"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def _push_client(env: Mapping[str, str]) -> PushClientName:
    raw = env.get("PUSH_CLIENT", "").strip().lower() or "signed"
    for name in PUSH_CLIENTS:
        if raw == name:
            return name
    raise ValueError(f"PUSH_CLIENT must be one of {', '.join(PUSH_CLIENTS)}, not {raw!r}")


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build settings from a mapping shaped like ``os.environ``; ValueError for a value no setting takes."""
    database = DatabaseSettings(
        url=env.get("DATABASE_URL") or None,
        host=env.get("DB_HOST", "127.0.0.1"),
        port=_int(env, "DB_PORT", 5432),
        name=env.get("DB_NAME", "postgres"),
        user=env.get("DB_USER", "postgres"),
        password=env.get("DB_PASSWORD") or None,
        iam_auth=_flag(env.get("DB_IAM_AUTH")),
        ssl=_flag(env.get("DB_SSL")),
        connect_timeout_s=_float(env, "DB_CONNECT_TIMEOUT", 5.0),
        read_timeout_s=_float(env, "DB_READ_TIMEOUT", 6.0),
    )
    origins = tuple(
        origin.strip()
        for origin in env.get("CORS_ALLOWED_ORIGINS", "http://localhost:4200").split(",")
        if origin.strip()
    )
    return Settings(
        database=database,
        redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_key_prefix=env.get("REDIS_KEY_PREFIX", "chat:"),
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        cognito_user_pool_id=env.get("COGNITO_USER_POOL_ID", ""),
        cognito_app_client_id=env.get("COGNITO_APP_CLIENT_ID", ""),
        token_issuer_override=env.get("TOKEN_ISSUER", ""),
        jwks_url_override=env.get("JWKS_URL", ""),
        jwks_json=env.get("JWKS_JSON", ""),
        jwks_refresh_cooldown_s=_float(env, "JWKS_REFRESH_COOLDOWN_SECONDS", 30.0),
        cors_allowed_origins=origins,
        max_message_chars=_int(env, "MAX_MESSAGE_CHARS", 4000),
        # The schema's CHECK allows 300: a larger setting would turn long titles into database faults.
        max_title_chars=min(_int(env, "MAX_TITLE_CHARS", 300), TITLE_CHARS_IN_SCHEMA),
        max_participants=_int(env, "MAX_PARTICIPANTS", 100),
        connection_ttl_s=_int(env, "CONNECTION_TTL_SECONDS", 660),
        connections_endpoint_url=env.get("CONNECTIONS_ENDPOINT_URL", ""),
        push_concurrency=_int(env, "PUSH_CONCURRENCY", 64),
        push_timeout_s=_float(env, "PUSH_TIMEOUT_SECONDS", 3.0),
        push_max_attempts=_int(env, "PUSH_MAX_ATTEMPTS", 3),
        push_client=_push_client(env),
        push_deadline_s=_float(env, "PUSH_DEADLINE_SECONDS", 5.0),
        push_budget_per_s=_float(env, "PUSH_BUDGET_PER_SECOND", 3000.0),
        push_budget_burst=_int(env, "PUSH_BUDGET_BURST", 1000),
        push_budget_direct_wait_s=_float(env, "PUSH_BUDGET_DIRECT_WAIT_SECONDS", 0.1),
        fanout_queue_url=env.get("FANOUT_QUEUE_URL", "").strip(),
        fanout_queue_threshold=_int(env, "FANOUT_QUEUE_THRESHOLD", 500),
        fanout_shard_size=_int(env, "FANOUT_SHARD_SIZE", 200),
        fanout_expand_members=_int(env, "FANOUT_EXPAND_MEMBERS", 2000),
        fanout_max_age_s=_float(env, "FANOUT_MAX_AGE_SECONDS", 3600.0),
        fanout_retry_base_s=_float(env, "FANOUT_RETRY_BASE_SECONDS", 1.0),
        fanout_max_receive_count=_int(env, "FANOUT_MAX_RECEIVE_COUNT", 5),
        redis_timeout_s=_float(env, "REDIS_TIMEOUT_SECONDS", 1.0),
        send_rate_per_s=_float(env, "SEND_RATE_PER_SECOND", 10.0),
        send_burst=_int(env, "SEND_BURST", 20),
        redis_cluster=_flag(env.get("REDIS_CLUSTER")),
        max_connections_per_user=_int(env, "MAX_CONNECTIONS_PER_USER", 10),
        create_conversation_rate_per_minute=_float(env, "CREATE_CONVERSATION_RATE_PER_MINUTE", 30.0),
        create_conversation_burst=_int(env, "CREATE_CONVERSATION_BURST", 10),
        rest_rate_per_minute=_float(env, "REST_RATE_PER_MINUTE", 600.0),
        rest_burst=_int(env, "REST_BURST", 100),
        rest_write_rate_per_minute=_float(env, "REST_WRITE_RATE_PER_MINUTE", 120.0),
        rest_write_burst=_int(env, "REST_WRITE_BURST", 30),
        max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 65536),
        cursor_secret=env.get("CURSOR_SECRET", ""),
        receipts_max_members=_int(env, "RECEIPTS_MAX_MEMBERS", 100),
        connect_grace_s=_float(env, "CONNECT_GRACE_SECONDS", 10.0),
        typing_max_members=_int(env, "TYPING_MAX_MEMBERS", 100),
        typing_members_ttl_s=_int(env, "TYPING_MEMBERS_TTL_SECONDS", 300),
        presence_sweep_max_users=_int(env, "PRESENCE_SWEEP_MAX_USERS", 5000),
    )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built from ``os.environ`` on first use."""
    return settings_from_env(os.environ)


def reset_settings() -> None:
    """Forget cached settings so the next ``get_settings()`` rereads the environment."""
    get_settings.cache_clear()
