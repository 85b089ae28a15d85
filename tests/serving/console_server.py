"""The console as it runs in production, for the end-to-end tests: a uvicorn process serving the
ASGI application (HTTP and websockets) on a free port, against the test database and Redis,
with the gateway of ``tests/serving/conftest.py`` as its gateway.

The test process and the server share state only through Postgres and Redis, so the tests that
use it are transactional (rows are committed where the server can read them). Static files are
collected into the server's own var folder, as ``make up`` does; e-mail goes to files there, so
a test can read the invitation link a person would find in their mailbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

from django.conf import settings
from django.db import connection

from tests.ray_fixtures import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ConsoleServer:
    url: str
    var_dir: Path
    log_path: Path

    @property
    def mail_dir(self) -> Path:
        return self.var_dir / "mail"

    def mails(self) -> list[str]:
        """Every message sent so far, oldest first, as plain text bodies."""
        if not self.mail_dir.exists():
            return []
        bodies = []
        for path in sorted(self.mail_dir.iterdir(), key=lambda p: p.stat().st_mtime):
            for chunk in path.read_bytes().split(b"-" * 79 + b"\n"):
                if chunk.strip():
                    message = message_from_bytes(chunk)
                    payload = message.get_payload(decode=True)
                    bodies.append(payload.decode() if isinstance(payload, bytes) else str(message))
        return bodies

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_console(*, redis_prefix: str, gateway_port: int) -> Iterator[ConsoleServer]:
    """Run the console until the generator is closed (use from a fixture)."""
    var_dir = Path(tempfile.mkdtemp(prefix="vl-console-"))
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "REDIS_URL": settings.REDIS_URL,
        "VLINDERS_REDIS_PREFIX": redis_prefix,
        "VLINDERS_VAR_DIR": str(var_dir),
        "SECRET_KEY": settings.SECRET_KEY,
        "VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER,
        "VLINDERS_SECRETS_KEY": settings.VLINDERS_SECRETS_KEY,
        "VLINDERS_GATEWAY_HOST": "127.0.0.1",
        "VLINDERS_GATEWAY_PORT": str(gateway_port),
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(var_dir / "mail"),
    }
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    port = free_port()
    log_path = var_dir / "console.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "uvicorn",
                "vlinders.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the console did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)
    try:
        yield ConsoleServer(url=url, var_dir=var_dir, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
