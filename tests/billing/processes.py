"""Real processes for the metering tests and the ingest benchmark: a private ``redis-server`` on a
free port, and ``celery -A vlinders worker`` subprocesses pointed at a given database and broker.

Each runs in its own session (process group), so a test can SIGKILL a worker together with its
pool children, as a machine or an OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(ROOT / ".venv" / "bin" / "celery")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group (it leads its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


class RedisServer:
    """A private Redis. ``appendfsync`` (``always``, ``everysec``) turns on the append-only file:
    with ``always`` a restart after SIGKILL keeps every message Redis acknowledged."""

    def __init__(self, workdir: Path, *, appendfsync: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = []
        if self.appendfsync:
            persistence = ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *persistence,
            ],
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_for(up, 10, f"redis-server on port {self.port}", poll=0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections cut."""
        if self.process is not None:
            _kill_group(self.process)
            self.process = None


class CeleryWorker:
    """``celery -A vlinders worker`` in its own process group, logging to ``log``."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        log: Path,
        queues: str = "usage",
        concurrency: int = 1,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.queues = queues
        self.concurrency = concurrency
        self.pool = pool
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 (the child keeps it; closed when we stop it)
        self.process = subprocess.Popen(
            [
                CELERY,
                "-A",
                "vlinders",
                "worker",
                "-Q",
                self.queues,
                "--pool",
                self.pool,
                "--concurrency",
                str(self.concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"metering-{uuid.uuid4().hex[:8]}@%h",
                "--loglevel",
                "INFO",
                *self.extra_args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"celery worker exited ({process.returncode}):\n{self.tail()}")
            return " ready." in self.log.read_text(errors="replace")

        wait_for(ready, timeout, f"the celery worker to be ready; log:\n{self.tail()}", poll=0.2)

    @property
    def pid(self) -> int:
        """The main process's id, also its process group's."""
        assert self.process is not None
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once."""
        if self.process is not None:
            _kill_group(self.process)
            self.process = None

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the main process; it stops its pool
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(20)
        self.kill()
