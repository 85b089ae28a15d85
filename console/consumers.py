"""Websocket consumers of the live usage dashboards (``docs/usage-api.md``).

``ws/orgs/<org_id>/usage/``: any member of the organisation (every role reads usage; platform
staff act as owners everywhere) receives that organisation's ``usage.update`` messages.
``ws/staff/usage/``: platform staff receive the ``usage.summary`` of every batch.

Who may connect is decided once, at the handshake, with the same rules as the management API
(``tenants.selectors.membership_role``). A refused connection is closed before it is accepted
(the browser sees the handshake fail with HTTP 403); the close code says why:
``4401`` not signed in, ``4404`` no such organisation or not a member of it (as the API's 404,
an outsider cannot tell the two apart), ``4403`` signed in but not staff (staff stream). The
consumers only forward what ``billing.live`` sends; anything a client sends is ignored.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from billing.live import STAFF_GROUP, org_group
from tenants import selectors
from tenants.models import Organization

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


@database_sync_to_async
def _is_member(user: Any, org_id: str) -> bool:
    organization = Organization.objects.filter(pk=org_id).first()
    if organization is None:
        return False
    return selectors.membership_role(user=user, organization=organization) is not None


class _UsageConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def _join(self, group: str) -> None:
        self.group = group
        await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen."""

    async def usage_update(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])

    async def usage_summary(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"])


class OrganizationUsageConsumer(_UsageConsumer):
    """Live usage of one organisation, for its members."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        org_id = str(self.scope["url_route"]["kwargs"]["org_id"])
        if not await _is_member(user, org_id):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self._join(org_group(org_id))


class StaffUsageConsumer(_UsageConsumer):
    """Live usage of the whole platform, for platform staff."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not (user.is_active and user.is_staff):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self._join(STAFF_GROUP)
