"""Websocket routes of the console (live dashboards arrive with usage metering)."""

from typing import Any

websocket_urlpatterns: list[Any] = []
