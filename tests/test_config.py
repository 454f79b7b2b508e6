"""Settings from the environment, and the database connection they describe."""

from __future__ import annotations

import pytest

from chalicelib.config import settings_from_env
from chalicelib.db import Database, connection_parameters
from chalicelib.sql import load_queries, parse_queries


def test_defaults_and_overrides() -> None:
    settings = settings_from_env({"MAX_MESSAGE_CHARS": "10", "CORS_ALLOWED_ORIGINS": " https://a.example , chrome-extension://abc ,"})
    assert settings.max_message_chars == 10
    assert settings.cors_allowed_origins == ("https://a.example", "chrome-extension://abc")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cr%40t@db.example:6543/chat", {"user": "app", "password": "s3cr@t", "host": "db.example", "port": 6543, "database": "chat"}),
        ("postgresql://postgres@/postgres?host=/tmp/pg", {"unix_sock": "/tmp/pg/.s.PGSQL.5432", "database": "postgres"}),
    ],
)
def test_database_url_becomes_explicit_parameters(url: str, expected: dict[str, object]) -> None:
    params = connection_parameters(settings_from_env({"DATABASE_URL": url}).database, "us-east-1")
    assert {key: params.get(key) for key in expected} == expected


def test_tls_is_on_when_asked() -> None:
    assert "ssl_context" in connection_parameters(settings_from_env({"DATABASE_URL": "postgresql://a@h/d?sslmode=require"}).database, "")
    assert "ssl_context" in connection_parameters(settings_from_env({"DB_SSL": "true"}).database, "")
    assert "ssl_context" not in connection_parameters(settings_from_env({}).database, "")


def test_discrete_database_settings() -> None:
    env = {"DB_HOST": "proxy.example", "DB_PORT": "5433", "DB_NAME": "chat", "DB_USER": "chat_app"}
    params = connection_parameters(settings_from_env(env).database, "")
    assert (params["host"], params["port"], params["database"], params["user"]) == ("proxy.example", 5433, "chat", "chat_app")


def test_rediss_url_with_password_is_accepted() -> None:
    import redis

    client = redis.Redis.from_url(settings_from_env({"REDIS_URL": "rediss://:pw@cache.example:6379/0"}).redis_url)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "pw" and kwargs["host"] == "cache.example"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_a_dead_connection_is_reopened_once() -> None:
    from chalicelib.config import get_settings

    database = Database(get_settings())
    pid = database.run_sql("SELECT pg_backend_pid() AS pid")[0]["pid"]
    killer = Database(get_settings())
    killer.run_sql("SELECT pg_terminate_backend(:pid)", pid=pid)
    assert database.run_sql("SELECT 1 AS one") == [{"one": 1}]
    assert database.run_sql("SELECT pg_backend_pid() AS pid")[0]["pid"] != pid
    database.close()
    killer.close()


def test_every_query_has_a_name_and_a_description() -> None:
    queries = load_queries()
    assert {"send_message", "mark_read", "list_user_conversations", "messages_in_seq_range"} <= set(queries)
    assert all(q.description and q.sql for q in queries.values())
    with pytest.raises(ValueError, match="description"):
        parse_queries("-- name: bare\nSELECT 1;")
