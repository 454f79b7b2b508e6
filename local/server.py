"""``python -m local.server`` (what ``make dev`` runs): the whole API on this machine, REST and WebSocket.

Start-up order matters. The data directory's lock comes first, so a second instance stops before it touches the
data; then both ports, so a busy port is reported before anything slow starts; then PostgreSQL and Redis
(embedded unless ``DATABASE_URL`` / ``REDIS_URL`` name servers), the schema, and the app's environment; the
servers last. SIGINT/SIGTERM shut down in reverse: sockets closed (each runs ``$disconnect``), HTTP stopped, the
app's connections closed, the embedded servers stopped. Further signals are ignored meanwhile, so an impatient
second Ctrl-C cannot leave an embedded PostgreSQL or Redis running.

Environment: ``HTTP_PORT`` (8000), ``WS_PORT`` (8001), 0 for any free port; ``LOCAL_DATA_DIR`` (``.data/dev``);
``LOCAL_WS_IDLE_TIMEOUT`` (600 s) and ``LOCAL_WS_MAX_DURATION`` (7200 s), API Gateway's limits, shortened in tests;
``LOCAL_PRESENCE_SWEEP_SECONDS`` (60 s), how often ``app.presence_sweep`` runs (EventBridge's rate in AWS).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import LocalChalice

from chalicelib import wiring
from chalicelib.config import get_settings
from chalicelib.migrations import MigrationError, apply_migrations
from local.connections_api import SigningKey
from local.identity import LocalIdentityProvider
from local.queue import LocalQueue, LocalQueueWorker
from local.rest_gateway import ApiGateway, HttpGateway, LocalRoutes, StaticFiles
from local.schedule import Timer
from local.services import EmbeddedServices
from local.websocket_gateway import Limits, WebSocketGateway, WebSocketHandlers

ROOT = Path(__file__).resolve().parent.parent
NAME = "chat-api local server"
CLIENT_ID = "local-client"
STAGE = "local"
FANOUT_QUEUE = "fanout"


class StartupError(Exception):
    """Something the user can fix (a busy port, a running instance); reported without a traceback."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while starting up."""


class StartupSignals:
    """Until the servers run, SIGINT/SIGTERM are noted and acted on between start-up steps, never inside one:
    an initdb or pg_ctl cut short would leave a data directory that PostgreSQL refuses next time."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            print(f"{NAME}: stopping once start-up reaches a safe point", file=sys.stderr, flush=True)
        self.received = True

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self)

    def check(self) -> None:
        if self.received:
            raise Stopped


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    http_port: int = 8000
    ws_port: int = 8001
    data_dir: Path = ROOT / ".data" / "dev"
    limits: Limits = field(default_factory=Limits)
    presence_sweep_s: float = 60.0


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{name} must be a port number (0-65535), not {raw!r}")
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {raw!r}")
    return value


def options_from_env(env: Mapping[str, str]) -> Options:
    data_dir = Path(env.get("LOCAL_DATA_DIR") or ROOT / ".data" / "dev")
    return Options(
        http_port=_port(env, "HTTP_PORT", 8000),
        ws_port=_port(env, "WS_PORT", 8001),
        data_dir=data_dir.resolve(),
        limits=Limits(
            idle_timeout_s=_seconds(env, "LOCAL_WS_IDLE_TIMEOUT", 600.0),
            max_duration_s=_seconds(env, "LOCAL_WS_MAX_DURATION", 7200.0),
        ),
        presence_sweep_s=_seconds(env, "LOCAL_PRESENCE_SWEEP_SECONDS", 60.0),
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (shorter, and what the user typed)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def exclusive_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir/server.lock`` while running; a second server on the same data refuses to start.

    ``flock`` is released by the kernel when the process dies, however it dies, so a crash never leaves it stale.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(
                f"another {NAME} is already running on {_shown(data_dir)} (pid {holder}); "
                "stop it first (Ctrl-C in its terminal), or set LOCAL_DATA_DIR to use other data"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def listen(host: str, port: int, variable: str) -> socket.socket:
    """A listening TCP socket, or a ``StartupError`` that says which setting to change."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(256)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} ({variable}) is already in use on {host}; stop whatever uses it, "
                f"or choose another port, e.g. {variable}={port + 10} make dev"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port} ({variable}): {error.strerror}") from None
    return sock


def app_environment(
    env: Mapping[str, str], *, http_url: str, database_url: str, redis_url: str, signing_key: SigningKey
) -> dict[str, str]:
    """The variables that configure the app for the local server, as ``.chalice/config.json`` does for a stage.

    The AWS keys are ``signing_key``, the one pair the local ``@connections`` API accepts signatures from.
    """
    port = http_url.rsplit(":", 1)[1]
    origins = [http_url, f"http://localhost:{port}", "http://localhost:4200"]
    origins += [o.strip() for o in env.get("CORS_ALLOWED_ORIGINS", "").split(",") if o.strip()]
    # The app talks to this server over HTTP (JWKS, @connections); a proxy from the user's shell must not intercept.
    no_proxy = ",".join(dict.fromkeys(["127.0.0.1", "localhost", *filter(None, env.get("NO_PROXY", "").split(","))]))
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TOKEN_ISSUER": f"{http_url}/_local",
        "JWKS_URL": f"{http_url}/_local/.well-known/jwks.json",
        "COGNITO_APP_CLIENT_ID": CLIENT_ID,
        "COGNITO_USER_POOL_ID": "local",
        "CONNECTIONS_ENDPOINT_URL": http_url,
        # Big fan-outs go through the in-process queue that serve() registers under this name (local/queue.py).
        "FANOUT_QUEUE_URL": f"local:{FANOUT_QUEUE}",
        "CORS_ALLOWED_ORIGINS": ",".join(dict.fromkeys(origins)),
        "AWS_REGION": signing_key.region,
        "AWS_ACCESS_KEY_ID": signing_key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": signing_key.secret_access_key,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


#: Variables that would point the app somewhere else: inline keys beat JWKS_URL; a profile or session token could
#: sign local pushes with real credentials.
REMOVED_VARIABLES = ("JWKS_JSON", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE")


def configure_app(env: dict[str, str]) -> None:
    os.environ.update(env)
    for name in REMOVED_VARIABLES:
        os.environ.pop(name, None)
    wiring.reset()


def load_app() -> Chalice:
    """Import ``app.py`` as Lambda would, made safe for concurrent requests.

    Chalice keeps the current request on the app object; ``chalice local`` swaps in ``LocalChalice``, which keeps
    it per thread, and so do we, since the HTTP side serves requests on many threads.
    """
    import app as chat_app

    app = chat_app.app
    if type(app) is Chalice:
        app.__class__ = LocalChalice
    return app


def chalice_config() -> Config:
    """The project's ``.chalice/config.json`` (timeouts, memory) for the Lambda contexts the gateway builds."""
    path = ROOT / ".chalice" / "config.json"
    from_disk = json.loads(path.read_text()) if path.exists() else {}
    return Config(chalice_stage="dev", function_name="api_handler", config_from_disk=from_disk)


def migrate() -> str:
    try:
        applied = apply_migrations(get_settings())
    except MigrationError as error:
        raise StartupError(f"schema: {error}") from None
    return "applied " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied) if applied else "up to date"


def write_credentials(path: Path, key: SigningKey) -> None:
    """``key`` as an AWS shared credentials file (mode 0600), so a developer can push by hand:
    ``AWS_SHARED_CREDENTIALS_FILE=.data/dev/aws-credentials aws apigatewaymanagementapi post-to-connection ...``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(
            "# The local server's @connections signing key; a new one is made at each start.\n"
            f"[default]\naws_access_key_id = {key.access_key_id}\naws_secret_access_key = {key.secret_access_key}\n"
        )


def fanout_worker() -> LocalQueueWorker:
    """The fan-out queue (SQS's rules, a dead-letter queue after FANOUT_MAX_RECEIVE_COUNT receives) and the
    poller that runs ``app.fanout_worker`` on its batches, as Lambda's event source mapping does."""
    import app as chat_app
    from chalicelib.queue import register_local_queue

    dead_letter = LocalQueue(f"{FANOUT_QUEUE}-dlq", retention_s=14 * 86400)
    queue = LocalQueue(
        FANOUT_QUEUE,
        visibility_timeout_s=360,
        max_receive_count=get_settings().fanout_max_receive_count,
        dead_letter=dead_letter,
    )
    register_local_queue(FANOUT_QUEUE, queue)
    return LocalQueueWorker(queue, chat_app.fanout_worker, batch_size=10, timeout_s=60)


def say(line: str) -> None:
    print(line, flush=True)


async def serve(
    options: Options,
    http_sock: socket.socket,
    ws_sock: socket.socket,
    urls: tuple[str, str],
    startup: StartupSignals,
    signing_key: SigningKey,
) -> None:
    """Run both gateways until SIGINT/SIGTERM, then close them (sockets first: their handlers may still push)."""
    http_url, ws_url = urls
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if startup.received:  # between the last check and the handlers above
        stop.set()

    app = load_app()
    identity = LocalIdentityProvider(
        f"{http_url}/_local", CLIENT_ID, key_path=options.data_dir / "local-identity-key.pem"
    )
    ws_gateway = WebSocketGateway(
        WebSocketHandlers.from_app(app), limits=options.limits, domain_name=ws_url.split("://", 1)[1], stage=STAGE
    )
    api = ApiGateway(
        app,
        chalice_config(),
        lambda token: wiring.get_verifier().verify(token),
        domain_name=http_url.split("://", 1)[1],
        stage=STAGE,
    )
    local_routes = LocalRoutes(
        identity, {"websocketUrl": ws_url, "restUrl": http_url, "connectionsUrl": http_url, "stage": STAGE}
    )
    http: HttpGateway | None = None
    fanout = fanout_worker()
    import app as chat_app

    # Expired connections have no $disconnect: the same scheduled handler as in AWS, on a timer.
    sweep = Timer("presence_sweep", chat_app.presence_sweep, options.presence_sweep_s)
    try:
        fanout.start()
        sweep.start()
        await ws_gateway.start(ws_sock)
        http = HttpGateway(
            http_sock,
            ws_gateway.sink(),
            signing_key=signing_key,
            api=api,
            local_routes=local_routes,
            static=StaticFiles(ROOT / "local" / "web"),
        )
        http.start()
        if not stop.is_set():
            say(f"{NAME} ready: REST {http_url}  WebSocket {ws_url}")
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        say(f"{NAME}: stopping")
        await ws_gateway.close()
        await asyncio.to_thread(sweep.stop)
        await asyncio.to_thread(fanout.stop)  # before HTTP: its pushes go through the local @connections API
        if http is not None:
            await asyncio.to_thread(http.stop)


def run(options: Options, startup: StartupSignals) -> None:
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive_lock(options.data_dir))
        http_sock = stack.enter_context(contextlib.closing(listen(options.host, options.http_port, "HTTP_PORT")))
        ws_sock = stack.enter_context(contextlib.closing(listen(options.host, options.ws_port, "WS_PORT")))
        http_url = f"http://{options.host}:{http_sock.getsockname()[1]}"
        ws_url = f"ws://{options.host}:{ws_sock.getsockname()[1]}"
        say(f"{NAME}: starting (data in {_shown(options.data_dir)})")

        services = stack.enter_context(EmbeddedServices(options.data_dir))
        startup.check()
        started = services.started
        say(
            "  PostgreSQL    "
            + (f"embedded: {services.database_url}" if "postgres" in started else "from DATABASE_URL")
        )
        say("  Redis         " + (f"embedded: {services.redis_url}" if "redis" in started else "from REDIS_URL"))
        signing_key = SigningKey.generate()
        credentials = options.data_dir / "aws-credentials"
        write_credentials(credentials, signing_key)
        configure_app(
            app_environment(
                os.environ,
                http_url=http_url,
                database_url=services.database_url,
                redis_url=services.redis_url,
                signing_key=signing_key,
            )
        )
        # Registered after the services, so it runs before they stop: the app's own connections close first.
        stack.callback(wiring.reset)
        say(f"  schema        {migrate()}")
        startup.check()
        say(f"  REST          {http_url}   (web client: {http_url}/)")
        say(f"  WebSocket     {ws_url}")
        say(f"  @connections  {http_url}/@connections/{{connectionId}}   (SigV4 key: {_shown(credentials)})")
        say(f'  tokens        curl -s -X POST {http_url}/_local/token -d \'{{"username":"alice"}}\'')
        asyncio.run(serve(options, http_sock, ws_sock, (http_url, ws_url), startup, signing_key))
    say(f"{NAME}: stopped")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    # Their INFO lines (every handshake, every pg_ctl call, every credential lookup) would drown the request log.
    for noisy in ("websockets", "pgserver", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        options = options_from_env(os.environ)
    except ValueError as error:
        print(f"{NAME}: {error}", file=sys.stderr)
        return 2
    startup = StartupSignals()
    startup.install()
    try:
        run(options, startup)
    except StartupError as error:
        print(f"{NAME}: {error}", file=sys.stderr, flush=True)
        return 1
    except Stopped:
        say(f"{NAME}: stopped while starting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
