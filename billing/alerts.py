"""Budget alerts: an organisation (or one of its keys) crossed a percentage of a monthly budget.

Thresholds come from ``settings.VLINDERS_BUDGET_ALERT_THRESHOLDS`` (percent, default 80 and 100).
A threshold ``t`` of a budget ``b`` is crossed when month-to-date usage ``u > 0`` and
``u * 100 >= b * t``; usage comes from the rollups (``billing.spend``), never from Redis.

One ``BudgetAlert`` row per scope, month, kind and threshold: its partial unique constraints make
the insert the arbiter, so two workers checking the same organisation at once create it once, and
only the one whose insert won sends the e-mail. The e-mail goes to the organisation's owners and
admins, after the surrounding transaction commits; ``notified_at`` records that it was sent. A
send that fails leaves ``notified_at`` empty and :func:`notify_pending` (the beat task) retries it
for a day.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import BudgetAlert
from billing.spend import MonthUsage, MonthUsed
from tenants.models import ApiKey, Limits, Membership, Organization, Role

logger = logging.getLogger(__name__)

# An alert whose e-mail could not be sent is retried for this long, then given up (logged).
RETRY_WINDOW = timedelta(days=1)


def thresholds() -> list[int]:
    """The configured thresholds, ascending, without duplicates."""
    return sorted({int(t) for t in settings.VLINDERS_BUDGET_ALERT_THRESHOLDS})


def crossed(used: Decimal | int, budget: Decimal | int, levels: Sequence[int]) -> list[int]:
    """The thresholds (percent) of ``budget`` that ``used`` has reached. Nothing is crossed
    without usage, so a budget of 0 alerts on the first use, not before."""
    if used <= 0:
        return []
    return [t for t in levels if Decimal(used) * 100 >= Decimal(budget) * t]


def _candidates(
    limits: Limits, used: MonthUsed, levels: Sequence[int]
) -> list[tuple[str, int, Decimal, Decimal]]:
    """``(kind, threshold, used, budget)`` for every threshold this scope has crossed."""
    out: list[tuple[str, int, Decimal, Decimal]] = []
    if limits.monthly_spend_budget is not None:
        budget = Decimal(limits.monthly_spend_budget)
        for t in crossed(used.spend, budget, levels):
            out.append((BudgetAlert.Kind.SPEND.value, t, used.spend, budget))
    if limits.monthly_token_budget is not None:
        token_budget = Decimal(limits.monthly_token_budget)
        for t in crossed(used.tokens, token_budget, levels):
            out.append((BudgetAlert.Kind.TOKENS.value, t, Decimal(used.tokens), token_budget))
    return out


def existing_alerts(usage: MonthUsage) -> set[tuple[UUID, UUID | None, str, int]]:
    """``(org, key or None, kind, threshold)`` of the alerts already raised in ``usage``'s month
    for its organisations: a cheap pre-check, so the common case inserts nothing. The unique
    constraints, not this read, are what make creating an alert race-safe."""
    return set(
        BudgetAlert.objects.filter(
            organization_id__in=set(usage.orgs) | set(usage.key_orgs.values()), month=usage.month
        ).values_list("organization_id", "api_key_id", "kind", "threshold_percent")
    )


def check(usage: MonthUsage) -> list[BudgetAlert]:
    """Create the alerts ``usage`` (one month, from the rollups) has newly crossed; returns the
    ones this call created. Their e-mails are sent once the current transaction commits."""
    levels = thresholds()
    if not levels or not (usage.orgs or usage.keys):
        return []
    existing = existing_alerts(usage)
    wanted: list[BudgetAlert] = []
    orgs = Organization.objects.filter(pk__in=list(usage.orgs)).only(*Limits.LIMIT_FIELDS)
    for org in orgs:
        for kind, t, used, budget in _candidates(org, usage.orgs[str(org.pk)], levels):
            if (org.pk, None, kind, t) not in existing:
                wanted.append(_alert(org.pk, None, usage.month, kind, t, used, budget))
    api_keys = ApiKey.objects.filter(pk__in=list(usage.keys)).only(
        "organization_id", *Limits.LIMIT_FIELDS
    )
    for key in api_keys:
        for kind, t, used, budget in _candidates(key, usage.keys[str(key.pk)], levels):
            if (key.organization_id, key.pk, kind, t) not in existing:
                wanted.append(
                    _alert(key.organization_id, key.pk, usage.month, kind, t, used, budget)
                )
    created: list[BudgetAlert] = []
    for alert in wanted:
        try:
            with transaction.atomic():  # a savepoint: losing the race rolls back this row only
                alert.save(force_insert=True)
        except IntegrityError:
            continue  # another worker created it (and notifies)
        created.append(alert)
    if created:
        ids = [a.pk for a in created]
        transaction.on_commit(lambda: notify(ids))
    return created


def _alert(
    org_id: UUID,
    key_id: UUID | None,
    month: str,
    kind: str,
    threshold: int,
    used: Decimal,
    budget: Decimal,
) -> BudgetAlert:
    return BudgetAlert(
        organization_id=org_id,
        api_key_id=key_id,
        month=month,
        kind=kind,
        threshold_percent=threshold,
        used=used,
        budget=budget,
    )


def recipients(organization_id: UUID) -> list[str]:
    """E-mail addresses of the organisation's active owners and admins."""
    emails = (
        Membership.objects.filter(
            organization_id=organization_id,
            role__in=[Role.OWNER, Role.ADMIN],
            user__is_active=True,
        )
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    return sorted(set(emails))


def notify(alert_ids: Iterable[object]) -> int:
    """Send the e-mails of these alerts that were not sent yet; returns how many e-mails went.

    Each alert is claimed first (``notified_at`` set where it is still empty, one UPDATE), so two
    callers never send the same alert; a failed send gives the claim back. Alerts of one scope
    and kind crossed together (80 % and 100 % in one batch) share one e-mail about the highest.
    """
    groups: dict[tuple[object, object, str], list[BudgetAlert]] = defaultdict(list)
    alerts = BudgetAlert.objects.filter(pk__in=list(alert_ids), notified_at__isnull=True)
    for alert in alerts.select_related("organization", "api_key"):
        groups[(alert.organization_id, alert.api_key_id, alert.kind)].append(alert)
    sent = 0
    for group in groups.values():
        to = recipients(group[0].organization_id)
        if not to:
            logger.warning("budget alert %s: the organisation has no owner or admin e-mail", group)
            continue
        now = timezone.now()
        claimed = [
            a
            for a in group
            if BudgetAlert.objects.filter(pk=a.pk, notified_at__isnull=True).update(notified_at=now)
        ]
        if not claimed:
            continue
        top = max(claimed, key=lambda a: a.threshold_percent)
        subject, body = _message(top)
        try:
            send_mail(subject, body, None, to)
        except Exception:
            logger.exception("budget alert %s: sending the e-mail failed; retried later", top.pk)
            BudgetAlert.objects.filter(pk__in=[a.pk for a in claimed]).update(notified_at=None)
            continue
        sent += 1
    return sent


def notify_pending() -> int:
    """Retry the e-mails of recent alerts that were never sent (a mail server that was down)."""
    since = timezone.now() - RETRY_WINDOW
    ids = BudgetAlert.objects.filter(notified_at__isnull=True, created_at__gte=since).values_list(
        "pk", flat=True
    )
    return notify(list(ids))


def _message(alert: BudgetAlert) -> tuple[str, str]:
    org = alert.organization
    scope = f"API key {alert.api_key.name!r} of {org.name}" if alert.api_key else org.name
    what = "spend" if alert.kind == BudgetAlert.Kind.SPEND else "token"
    if alert.kind == BudgetAlert.Kind.SPEND:
        used, budget = f"{alert.used:.2f}", f"{alert.budget:.2f}"
    else:
        used, budget = f"{int(alert.used):,}", f"{int(alert.budget):,}"
    subject = f"[Vlinders] {scope} has used {alert.threshold_percent}% of its monthly {what} budget"
    consequence = (
        "Requests that would go over the budget are refused until the next month or until the "
        "budget is raised."
        if alert.threshold_percent >= 100
        else "Requests will be refused once the budget is used up."
    )
    body = (
        f"{scope} has used {used} of its monthly {what} budget of {budget} in {alert.month} "
        f"(UTC), {alert.threshold_percent}% or more.\n\n{consequence}\n"
    )
    return subject, body
