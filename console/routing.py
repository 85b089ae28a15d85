"""Websocket routes of the console: the live usage dashboards (``console.consumers``)."""

from typing import Any

from django.urls import path

from console.consumers import OrganizationUsageConsumer, StaffUsageConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/orgs/<uuid:org_id>/usage/", OrganizationUsageConsumer.as_asgi()),
    path("ws/staff/usage/", StaffUsageConsumer.as_asgi()),
]
