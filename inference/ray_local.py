"""Start and stop a local Ray cluster for one machine: the bring-up command and the tests.

The cluster runs ``ray start --head --block`` in a process group of its own, so stopping it
(SIGTERM to the group) stops exactly this cluster's processes and no other Ray on the machine
(``ray stop`` would stop every one). It is started with token authentication and Ray Serve's
high-throughput mode (DESIGN.md: HAProxy ingress, throughput-optimised replica traffic).

No Django here: the tests start a cluster before Django settings matter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Ray runs workers at nice 15 by default, so the model engines (children of Serve replicas)
    # lose the CPU to every other process on the node. Measured with bench/vllm_vs_gateway.py on
    # 2 cores: 0.958 of vLLM's own server's throughput at nice 0 against 0.945 at nice 15.
    "RAY_worker_niceness": "0",
}


@dataclass
class LocalRay:
    """One local Ray head node.

    ``gcs_port`` avoids 6379, Ray's default, which is the local Redis's port.
    ``env`` is added to the cluster's environment: every Ray worker (so every Serve replica)
    inherits it; that is how secrets such as ``VLINDERS_KEY_PEPPER`` and ``VLINDERS_SECRETS_KEY``
    (which opens the upstream API keys published to Redis) reach the data plane.
    ``metrics_dir`` becomes ``PROMETHEUS_MULTIPROC_DIR``, where every replica of the node records
    its metrics (``inference/serving/metrics.py``); it is emptied at start, since files left by
    an earlier cluster would be summed into this one's counters.

    Serve's HAProxy binds a stats port (8404) and a metrics port (9101) of its own and keeps its
    files under /tmp/haproxy-serve; a second cluster on the same machine (the tests, a benchmark)
    must give other ports, and a ``temp_dir`` moves the files beside the cluster's.
    """

    token: str
    gcs_port: int = 6390
    dashboard_port: int = 8265
    num_cpus: int | None = None
    temp_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    metrics_dir: str | None = None
    haproxy_stats_port: int | None = None
    haproxy_metrics_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    _haproxy: str | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SERVE_ENV)
        env.update(self.env)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        if self.haproxy_stats_port is not None:
            env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(self.haproxy_stats_port)
        if self.haproxy_metrics_port is not None:
            env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(self.haproxy_metrics_port)
        if self.temp_dir is not None:
            # Ray adds a 56-character directory under this one, and HAProxy's socket path may
            # not exceed 97 characters: keep it short.
            haproxy = self._haproxy_dir()
            env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = f"{haproxy}/haproxy.cfg"
            env["RAY_SERVE_HAPROXY_SOCKET_PATH"] = f"{haproxy}/admin.sock"
            env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = haproxy
            env["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = f"{haproxy}/server-state"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        env.pop("RAY_ADDRESS", None)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return env

    def _haproxy_dir(self) -> str:
        if self._haproxy is None:
            self._haproxy = tempfile.mkdtemp(prefix="vlhp")
        return self._haproxy

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--disable-usage-stats",
            "--include-dashboard=true",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.temp_dir is not None:
            cmd.append(f"--temp-dir={self.temp_dir}")
        return cmd

    def start(self, *, timeout: float = 120.0, log_path: str | None = None) -> None:
        """Start the head node and wait until its dashboard answers an authenticated request."""
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            Path(self.metrics_dir).mkdir(parents=True)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603  (our own command line, no shell)
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}")
            if self.dashboard_ready():
                return
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"Ray's dashboard did not answer within {timeout} s")

    def dashboard_ready(self) -> bool:
        request = urllib.request.Request(  # noqa: S310  (a local http URL we built)
            f"{self.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait(self) -> int:
        """Block until the cluster's process ends (for a foreground process manager)."""
        assert self.process is not None
        return self.process.wait()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop this cluster's processes and no other.

        Ray's workers put themselves in process groups of their own but stay in the session that
        ``start_new_session`` gave the head, so the session id finds every one of them.
        """
        if self.process is None:
            return
        session = self.process.pid
        _signal_session(session, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _session_members(session):
            time.sleep(0.25)
        _signal_session(session, signal.SIGKILL)
        self.process.wait()
        self.process = None
        if self._haproxy is not None:
            shutil.rmtree(self._haproxy, ignore_errors=True)
            self._haproxy = None


def _session_members(session: int) -> list[int]:
    """Live processes (not zombies) whose session id is ``session`` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, session, ...
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(stat.parent.name))
    return members


def _signal_session(session: int, signum: int) -> None:
    for pid in _session_members(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
