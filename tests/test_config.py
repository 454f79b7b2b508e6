"""Settings from the environment, and the database connection they describe."""

from __future__ import annotations

import re

import pytest

from chalicelib.config import Settings, settings_from_env
from chalicelib.db import Database, connection_parameters
from chalicelib.sql import QUERY_DIR, load_queries, parse_queries


def test_defaults_and_overrides() -> None:
    settings = settings_from_env(
        {"MAX_MESSAGE_CHARS": "10", "CORS_ALLOWED_ORIGINS": " https://a.example , chrome-extension://abc ,"}
    )
    assert settings.max_message_chars == 10
    assert settings.cors_allowed_origins == ("https://a.example", "chrome-extension://abc")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app:s3cr%40t@db.example:6543/chat",
            {"user": "app", "password": "s3cr@t", "host": "db.example", "port": 6543, "database": "chat"},
        ),
        (
            "postgresql://postgres@/postgres?host=/tmp/pg",
            {"unix_sock": "/tmp/pg/.s.PGSQL.5432", "database": "postgres"},
        ),
    ],
)
def test_database_url_becomes_explicit_parameters(url: str, expected: dict[str, object]) -> None:
    params = connection_parameters(settings_from_env({"DATABASE_URL": url}).database, "us-east-1")
    assert {key: params.get(key) for key in expected} == expected


def test_tls_is_on_when_asked() -> None:
    assert "ssl_context" in connection_parameters(
        settings_from_env({"DATABASE_URL": "postgresql://a@h/d?sslmode=require"}).database, ""
    )
    assert "ssl_context" in connection_parameters(settings_from_env({"DB_SSL": "true"}).database, "")
    assert "ssl_context" not in connection_parameters(settings_from_env({}).database, "")


def test_discrete_database_settings() -> None:
    env = {"DB_HOST": "proxy.example", "DB_PORT": "5433", "DB_NAME": "chat", "DB_USER": "chat_app"}
    params = connection_parameters(settings_from_env(env).database, "")
    assert (params["host"], params["port"], params["database"], params["user"]) == (
        "proxy.example",
        5433,
        "chat",
        "chat_app",
    )


def test_rediss_url_with_password_is_accepted() -> None:
    import redis

    client = redis.Redis.from_url(settings_from_env({"REDIS_URL": "rediss://:pw@cache.example:6379/0"}).redis_url)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["host"] == "cache.example"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_a_dead_connection_is_reopened_once(settings: Settings) -> None:
    database = Database(settings)
    pid = database.run_sql("SELECT pg_backend_pid() AS pid")[0]["pid"]
    killer = Database(settings)
    killer.run_sql("SELECT pg_terminate_backend(:pid)", pid=pid)
    assert database.run_sql("SELECT 1 AS one") == [{"one": 1}]
    assert database.run_sql("SELECT pg_backend_pid() AS pid")[0]["pid"] != pid
    database.close()
    killer.close()


def test_every_query_has_a_name_a_one_line_description_and_a_body() -> None:
    # Read from the files themselves: a header the parser's pattern misses would silently become part of the
    # query above it, so every "-- name:" line must be a loaded query, described on the very next line.
    queries = load_queries()
    headers: list[str] = []
    for path in sorted(QUERY_DIR.glob("*.sql")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if header := re.match(r"^--\s*name\s*:(.*)", line):
                headers.append(header.group(1).strip())
                following = lines[number + 1] if number + 1 < len(lines) else ""
                assert re.match(r"^-- \S", following), f"{path.name}:{number + 2}: describe {headers[-1]} here"
    assert sorted(headers) == sorted(queries)
    assert {"send_message", "mark_read", "list_user_conversations", "messages_in_seq_range"} <= set(queries)
    for query in queries.values():
        assert query.description.endswith("."), query.name
        assert query.sql and not query.sql.startswith("--") and "-- name:" not in query.sql, query.name
        assert not re.search(r"%s|\$\d", query.sql), f"{query.name}: :named parameters only"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("-- name: bare\nSELECT 1;", "'bare' needs a one-line description", id="no description"),
        pytest.param("-- name: empty\n-- Only a description.\n", "'empty' needs a one-line description", id="no body"),
        pytest.param(
            "-- name: dup\n-- One.\nSELECT 1;\n-- name: dup\n-- Two.\nSELECT 2;", "'dup' is defined twice", id="twice"
        ),
    ],
)
def test_a_query_without_a_description_or_a_body_is_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_queries(text)


@pytest.mark.parametrize(("value", "expected"), [("", "signed"), (" Boto3 ", "boto3"), ("signed", "signed")])
def test_push_client_names_one_of_the_clients(value: str, expected: str) -> None:
    assert settings_from_env({"PUSH_CLIENT": value}).push_client == expected


def test_an_unknown_push_client_is_refused_when_settings_are_built() -> None:
    with pytest.raises(ValueError, match="PUSH_CLIENT must be one of signed, boto3, not 'carrier-pigeon'"):
        settings_from_env({"PUSH_CLIENT": "carrier-pigeon"})
