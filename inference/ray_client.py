"""A small client of the Ray dashboard's Serve REST API (contract 1, docs/deployment-spec.md).

- ``PUT /api/serve/applications/`` applies a whole ``ServeDeploySchema`` config: every application
  not listed is removed, so the caller always sends all of them. Ray validates the config before
  it changes anything: a refused config (400) leaves the running applications as they were.
- ``GET /api/serve/applications/`` returns ``ServeInstanceDetails``: per application its status,
  message, the deployed config, and per deployment its status, message and replicas.
- ``GET /nodes?view=summary`` and ``GET /api/cluster_status``: the nodes and the logical
  resources in use, for the operator console's Cluster page (``inference.cluster``).

Every request carries ``Authorization: Bearer <token>`` (Ray's token authentication). Errors are
typed so callers can record them: :class:`RayUnreachable` (connection refused, DNS, timeout),
:class:`RayAuthError` (401 missing / 403 wrong token), :class:`RayConfigRefused` (400, with Ray's
own message) and :class:`RayDashboardError` for anything else.

It uses the standard library (``urllib``): httpx is not a dependency of the project.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

SERVE_APPLICATIONS_PATH = "/api/serve/applications/"
# The dashboard's node summary (per node: hostname, IP, head or not, physical CPUs and memory,
# GPUs, and Ray's logical ``resourcesTotal``) and the autoscaler's report (per node, the logical
# resources in use and in total). Both are served with token authentication in Ray 2.60.
NODES_SUMMARY_PATH = "/nodes?view=summary"
CLUSTER_STATUS_PATH = "/api/cluster_status"
# Ray's messages can be long (a pydantic repr, a traceback); records keep this much.
MAX_MESSAGE_CHARS = 4000


class RayDashboardError(Exception):
    """The dashboard did not do what was asked. ``status`` is the HTTP status, if one came."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RayUnreachable(RayDashboardError):
    """No HTTP answer: connection refused, unknown host, or timeout."""


class RayAuthError(RayDashboardError):
    """401 (no token sent) or 403 (wrong token): the token differs from the cluster's."""


class RayConfigRefused(RayDashboardError):
    """400: Ray refused the config (schema validation or deploy error) and kept the old one."""


def ray_auth_token() -> str:
    """The token every caller sends to (and ``manage.py run_ray`` starts) the cluster with.

    ``settings.VLINDERS_RAY_AUTH_TOKEN`` (environment, ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``), else the file ``run_ray`` generated
    (``settings.VLINDERS_RAY_AUTH_TOKEN_FILE``), read at call time so a worker that started
    before the token was generated still finds it; else empty (no ``Authorization`` header).
    """
    if settings.VLINDERS_RAY_AUTH_TOKEN:
        return str(settings.VLINDERS_RAY_AUTH_TOKEN)
    path = Path(settings.VLINDERS_RAY_AUTH_TOKEN_FILE)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def ensure_ray_auth_token() -> str:
    """:func:`ray_auth_token`, generating one into ``VLINDERS_RAY_AUTH_TOKEN_FILE`` (mode 0600)
    when none is configured."""
    token = ray_auth_token()
    if token:
        return token
    path = Path(settings.VLINDERS_RAY_AUTH_TOKEN_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its token
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token


def _truncate(text: str) -> str:
    text = text.strip()
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[:MAX_MESSAGE_CHARS] + " […]"


@dataclass(frozen=True)
class RayDashboardClient:
    """The dashboard at ``base_url`` (``http://host:8265``), authenticated with ``token``."""

    base_url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, *, timeout: float = 30.0) -> RayDashboardClient:
        return cls(
            base_url=str(settings.VLINDERS_RAY_DASHBOARD_URL),
            token=ray_auth_token(),
            timeout=timeout,
        )

    def get_applications(self) -> dict[str, Any]:
        """``ServeInstanceDetails`` as a dict; ``applications`` is ``{}`` when Serve is not
        running."""
        return self._get_object(SERVE_APPLICATIONS_PATH)

    def get_nodes_summary(self) -> list[dict[str, Any]]:
        """Every node Ray knows (alive or dead), as ``GET /nodes?view=summary`` lists them: the
        reporter's physical figures (``hostname``, ``ip``, ``cpus`` = [logical, physical],
        ``mem`` = [total, available, percent, used], ``gpus``) and ``raylet`` (``nodeId``,
        ``state``, ``isHeadNode``, ``resourcesTotal``, ``metricsExportPort``)."""
        data = self._get_object(NODES_SUMMARY_PATH).get("data") or {}
        summary = data.get("summary") if isinstance(data, dict) else None
        if not isinstance(summary, list):
            raise RayDashboardError("Ray's dashboard answered the node summary without a list")
        return [node for node in summary if isinstance(node, dict)]

    def get_resource_usage(self) -> dict[str, dict[str, list[float]]]:
        """Per node id, Ray's logical resources ``{"CPU": [used, total], "GPU": …}`` from the
        autoscaler's load report (``GET /api/cluster_status``); ``{}`` before its first
        report."""
        data = self._get_object(CLUSTER_STATUS_PATH).get("data") or {}
        status = (data.get("clusterStatus") or {}) if isinstance(data, dict) else {}
        report = (status.get("loadMetricsReport") or {}) if isinstance(status, dict) else {}
        usage = report.get("usageByNode") if isinstance(report, dict) else None
        return usage if isinstance(usage, dict) else {}

    def _get_object(self, path: str) -> dict[str, Any]:
        body = self._request("GET", path)
        try:
            details = json.loads(body or "{}")
        except ValueError as exc:
            raise RayDashboardError(f"Ray's dashboard answered with invalid JSON: {exc}") from exc
        if not isinstance(details, dict):
            raise RayDashboardError("Ray's dashboard answered with something else than an object")
        return details

    def put_applications(self, config: dict[str, Any]) -> None:
        """Apply ``config`` (a ``ServeDeploySchema`` dict). Returns once Ray accepted it; the
        applications then deploy asynchronously (poll :meth:`get_applications`)."""
        self._request("PUT", SERVE_APPLICATIONS_PATH, body=config)

    def wait_running(
        self, names: list[str], *, timeout: float, poll_interval: float = 1.0
    ) -> dict[str, Any]:
        """Poll until every named application is ``RUNNING``; return their details. Raise
        ``RayDashboardError`` with Ray's message as soon as one is ``DEPLOY_FAILED``, and
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        apps: dict[str, Any] = {}
        while time.monotonic() < deadline:
            apps = self.get_applications().get("applications") or {}
            states = {name: (apps.get(name) or {}).get("status") for name in names}
            failed = [name for name, state in states.items() if state == "DEPLOY_FAILED"]
            if failed:
                message = (apps[failed[0]] or {}).get("message", "")
                raise RayDashboardError(f"{failed[0]} failed to deploy: {_truncate(message)}")
            if all(state == "RUNNING" for state in states.values()):
                return {name: apps[name] for name in names}
            time.sleep(poll_interval)
        raise TimeoutError(f"not RUNNING after {timeout} s: {json.dumps(apps)[:2000]}")

    def delete_applications(self) -> None:
        """Shut Serve down (every application and the proxies)."""
        self._request("DELETE", SERVE_APPLICATIONS_PATH)

    def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None) -> str:
        url = self.base_url.rstrip("/") + path
        if not url.startswith(("http://", "https://")):
            raise RayDashboardError(f"The Ray dashboard URL must be http(s): {self.base_url!r}")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (checked)
                return str(response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            text = _truncate(exc.read().decode("utf-8", "replace")) or exc.reason
            raise _http_error(exc.code, text, method, url) from exc
        except urllib.error.URLError as exc:
            raise RayUnreachable(
                f"Ray's dashboard at {self.base_url} is unreachable: {exc.reason}"
            ) from exc
        except TimeoutError as exc:
            raise RayUnreachable(
                f"Ray's dashboard at {self.base_url} did not answer within {self.timeout} s"
            ) from exc
        except OSError as exc:  # reset connections and the like
            raise RayUnreachable(
                f"Ray's dashboard at {self.base_url} is unreachable: {exc}"
            ) from exc


def _http_error(status: int, text: str, method: str, url: str) -> RayDashboardError:
    if status in (401, 403):
        return RayAuthError(
            f"Ray's dashboard refused the token ({status}: {text}). Set VLINDERS_RAY_AUTH_TOKEN "
            "to the cluster's token (docs/operations.md).",
            status=status,
        )
    if status == 400:
        return RayConfigRefused(f"Ray refused the config: {text}", status=status)
    return RayDashboardError(f"{method} {url} failed with {status}: {text}", status=status)
