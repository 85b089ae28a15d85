"""Finalisation under concurrency: workers finalising the same month at once (a beat run twice,
two workers, a redelivered task), each thread with its own database connection, in real
transactions. Still one invoice per organisation and period, numbers without gaps."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from billing import services
from billing.models import Invoice, InvoiceAdjustment, InvoiceSequence
from tests.billing.invoice_support import ingest, month_of_events
from tests.billing.usage_data import make_key
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PERIOD = "2026-10"
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
WORKERS = 8


def _race(target: Callable[[], Any], workers: int = WORKERS) -> list[Any]:
    """Run ``target`` in ``workers`` threads released together; return results, raise errors."""
    barrier = threading.Barrier(workers)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(target())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def _orgs(count: int) -> list[Any]:
    orgs = [OrganizationFactory(slug=f"c{i}", name=f"c{i}", created_at=START) for i in range(count)]
    ingest(month_of_events([(org, [make_key(org)]) for org in orgs], month_start=START, count=300))
    return orgs


def _assert_gap_free(expected_invoices: int) -> None:
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert len(numbers) == expected_invoices
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert InvoiceSequence.objects.get(name=services.SEQUENCE).last_number == numbers[-1]


def test_concurrent_runs_of_a_whole_month_create_each_invoice_once() -> None:
    orgs = _orgs(12)
    results = _race(lambda: services.invoices_finalise_period(period=PERIOD))
    assert sum(len(r.created) for r in results) == len(orgs)
    assert Invoice.objects.filter(period=PERIOD).count() == len(orgs)
    _assert_gap_free(len(orgs))
    # Run again (a redelivered task): nothing new.
    assert services.invoices_finalise_period(period=PERIOD).created == []
    _assert_gap_free(len(orgs))


def test_concurrent_finalisation_of_one_organisation() -> None:
    (org,) = _orgs(1)
    outcomes = _race(lambda: services.invoice_finalise(organization_id=org.pk, period=PERIOD))
    assert sum(o.created for o in outcomes) == 1
    assert len({o.invoice.pk for o in outcomes}) == 1
    _assert_gap_free(1)


def test_an_adjustment_racing_finalisation_is_on_the_invoice_or_refused() -> None:
    (org,) = _orgs(1)
    staff = UserFactory(username="staff-race", is_staff=True)

    def adjust() -> str:
        try:
            services.invoice_adjustment_create(
                organization_id=org.pk,
                period=PERIOD,
                kind="credit",
                amount=Decimal("1.00"),
                reason="race",
                actor=staff,
            )
            return "created"
        except services.InvoiceImmutable:
            return "refused"

    calls = iter([adjust, lambda: services.invoice_finalise(organization_id=org.pk, period=PERIOD)])
    targets = [next(calls), next(calls)]
    lock = threading.Lock()

    def one() -> Any:
        with lock:
            target = targets.pop()
        return target()

    _race(one, workers=2)
    invoice = Invoice.objects.get(organization=org, period=PERIOD)
    for adjustment in InvoiceAdjustment.objects.filter(organization=org):
        assert adjustment.invoice_id == invoice.pk  # never left behind a finalised month
    credits = invoice.lines.filter(kind="credit").count()
    assert credits == InvoiceAdjustment.objects.filter(organization=org).count()


def test_a_failed_finalisation_consumes_no_number(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    first, _second = _orgs(2)
    real = services.audit_record
    calls = {"n": 0}

    def failing_once(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("crash after the number was taken")
        return real(**kwargs)

    monkeypatch.setattr(services, "audit_record", failing_once)
    with pytest.raises(RuntimeError):
        services.invoice_finalise(organization_id=first.pk, period=PERIOD)
    assert not Invoice.objects.exists()
    services.invoices_finalise_period(period=PERIOD)
    _assert_gap_free(2)
