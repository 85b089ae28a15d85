"""Plans: what an organisation bought, and the scheduling priority that comes with it.

The plan's priority reaches the engine with every request of the organisation (the access
snapshot carries it to the gateway, the gateway hands it to the model server). On a vLLM model
with ``scheduling_policy: priority`` (opt-in per model: it costs throughput), vLLM serves a
waiting request with a lower priority value first, so under load a premium tenant's requests are
scheduled before a free tenant's that arrived earlier. It never preempts a running request and
changes nothing while there is room for everyone. Clients cannot set it: the gateway drops a
``priority`` in the request body.
"""

from __future__ import annotations

from django.db import models


class Plan(models.TextChoices):
    FREE = "free", "Free"
    STANDARD = "standard", "Standard"
    PREMIUM = "premium", "Premium"


# Lower is served first (vLLM's convention).
_PRIORITY = {Plan.FREE: 10, Plan.STANDARD: 0, Plan.PREMIUM: -10}


def scheduling_priority(plan: str) -> int:
    """The engine scheduling priority of ``plan``; an unknown plan is scheduled as standard."""
    try:
        return _PRIORITY[Plan(plan)]
    except ValueError:
        return 0
