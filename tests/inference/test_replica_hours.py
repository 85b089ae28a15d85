"""Replica-hours (``inference.replica_hours``): the reconciler's observations become replica-seconds
per model and UTC hour, split at hour boundaries, capped after a gap, added atomically; and the
catalog's ``cost_per_replica_hour`` through the staff API and the admin. Times are explicit
(``now=``); nothing sleeps."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.test import Client

from inference import replica_hours
from inference.deploy_services import deployment_reconcile
from inference.models import CatalogModel, ModelDeploymentStatus, ReplicaHours
from inference.replica_hours import Observation, accumulate, split_by_hour
from tests.factories import CatalogModelFactory, UserFactory
from tests.ray_fixtures import free_port

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 31, 23, 59, 50, tzinfo=UTC)  # 10 s before a month (and day) boundary


def hours_of(model: CatalogModel) -> dict[datetime, float]:
    return dict(
        ReplicaHours.objects.filter(catalog_model=model)
        .order_by("hour")
        .values_list("hour", "replica_seconds")
    )


def test_split_by_hour_cuts_at_each_utc_hour() -> None:
    start = datetime(2026, 1, 1, 10, 59, 30, tzinfo=UTC)
    end = datetime(2026, 1, 1, 13, 0, 15, tzinfo=UTC)
    assert split_by_hour(start, end) == [
        (datetime(2026, 1, 1, 10, tzinfo=UTC), 30.0),
        (datetime(2026, 1, 1, 11, tzinfo=UTC), 3600.0),
        (datetime(2026, 1, 1, 12, tzinfo=UTC), 3600.0),
        (datetime(2026, 1, 1, 13, tzinfo=UTC), 15.0),
    ]
    assert split_by_hour(end, start) == []
    assert split_by_hour(start, start) == []


def test_an_interval_across_an_hour_is_split_and_increments_add_up() -> None:
    model = CatalogModelFactory()
    added = accumulate(
        model_id=model.pk, previous=Observation(at=T0, replicas=2), now=T0 + timedelta(seconds=25)
    )
    first_hour, next_hour = T0.replace(minute=0, second=0), datetime(2026, 4, 1, tzinfo=UTC)
    assert added == [(first_hour, 20.0), (next_hour, 30.0)]
    assert hours_of(model) == {first_hour: 20.0, next_hour: 30.0}
    # The next observation adds to the same hour's row (one upsert, no new row).
    accumulate(
        model_id=model.pk,
        previous=Observation(at=T0 + timedelta(seconds=25), replicas=3),
        now=T0 + timedelta(seconds=40),
    )
    assert hours_of(model) == {first_hour: 20.0, next_hour: 30.0 + 45.0}


def test_models_are_counted_apart() -> None:
    one, two = CatalogModelFactory(), CatalogModelFactory()
    accumulate(model_id=one.pk, previous=Observation(T0, 1), now=T0 + timedelta(seconds=5))
    accumulate(model_id=two.pk, previous=Observation(T0, 4), now=T0 + timedelta(seconds=5))
    assert sum(hours_of(one).values()) == 5.0
    assert sum(hours_of(two).values()) == 20.0


def test_a_gap_longer_than_the_cap_counts_only_the_cap(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_REPLICA_HOURS_MAX_GAP_S = 30
    model = CatalogModelFactory()
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    added = accumulate(
        model_id=model.pk, previous=Observation(now - timedelta(hours=3), 2), now=now
    )
    # The last 30 s before `now`, split at noon: 20 s before, 10 s after, 2 replicas.
    assert added == [
        (datetime(2026, 1, 1, 11, tzinfo=UTC), 40.0),
        (datetime(2026, 1, 1, 12, tzinfo=UTC), 20.0),
    ]


@pytest.mark.parametrize(
    ("previous", "now"),
    [
        (None, T0),  # first observation
        (Observation(T0, 0), T0 + timedelta(seconds=10)),  # nothing was running
        (Observation(T0, 2), T0),  # no time passed
        (Observation(T0, 2), T0 - timedelta(seconds=5)),  # a clock that went back
    ],
)
def test_nothing_is_added_without_running_time(previous, now) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory()
    assert accumulate(model_id=model.pk, previous=previous, now=now) == []
    assert not ReplicaHours.objects.exists()


@pytest.fixture
def unreachable(settings):  # type: ignore[no-untyped-def]
    """A Ray dashboard URL where nothing listens: every reconcile observes ``unknown``, 0."""
    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"
    settings.VLINDERS_RAY_AUTH_TOKEN = "irrelevant"
    return settings


def test_the_reconciler_counts_the_replicas_it_saw_last_until_now(unreachable) -> None:  # type: ignore[no-untyped-def]
    """The previous observation is the status row before the reconciler rewrites it: its
    ``updated_at`` and ``replicas_running``. The count seen last holds until this look."""
    model = CatalogModelFactory()
    ModelDeploymentStatus.objects.create(
        catalog_model=model, deployment="d", state="running", replicas_running=3
    )
    seen_at = datetime.now(UTC) - timedelta(seconds=12)
    ModelDeploymentStatus.objects.filter(catalog_model=model).update(updated_at=seen_at)

    (row,) = deployment_reconcile()
    assert (row.state, row.replicas_running) == ("unknown", 0)
    expected = 3 * (row.updated_at - seen_at).total_seconds()
    total = ReplicaHours.objects.filter(catalog_model=model).aggregate(s=Sum("replica_seconds"))
    assert total["s"] == pytest.approx(expected)
    assert expected >= 36.0

    # The next look starts from this one's time and count (0 now): nothing more.
    deployment_reconcile()
    total = ReplicaHours.objects.filter(catalog_model=model).aggregate(s=Sum("replica_seconds"))
    assert total["s"] == pytest.approx(expected)


def test_the_reconciler_caps_a_long_silence(unreachable) -> None:  # type: ignore[no-untyped-def]
    unreachable.VLINDERS_REPLICA_HOURS_MAX_GAP_S = 30
    model = CatalogModelFactory()
    ModelDeploymentStatus.objects.create(
        catalog_model=model, deployment="d", state="running", replicas_running=2
    )
    ModelDeploymentStatus.objects.filter(catalog_model=model).update(
        updated_at=datetime.now(UTC) - timedelta(days=2)
    )
    deployment_reconcile()
    total = ReplicaHours.objects.filter(catalog_model=model).aggregate(s=Sum("replica_seconds"))
    assert total["s"] == pytest.approx(60.0)


def test_a_model_seen_for_the_first_time_adds_nothing(unreachable) -> None:  # type: ignore[no-untyped-def]
    CatalogModelFactory()
    deployment_reconcile()
    assert not ReplicaHours.objects.exists()
    assert replica_hours.previous_observations()  # the row now exists for the next look


# --- cost_per_replica_hour in the catalog -------------------------------------------------------
MODELS = "/api/v1/models/"


def test_staff_set_the_cost_per_replica_hour_through_the_api(as_staff) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="costed")
    assert as_staff.get(f"{MODELS}costed/").json()["cost_per_replica_hour"] is None
    response = as_staff.patch(f"{MODELS}costed/", {"cost_per_replica_hour": "2.125"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["cost_per_replica_hour"] == "2.125000"
    model.refresh_from_db()
    assert model.cost_per_replica_hour == Decimal("2.125")
    # Cleared again: unknown.
    response = as_staff.patch(f"{MODELS}costed/", {"cost_per_replica_hour": None}, format="json")
    assert response.status_code == 200
    model.refresh_from_db()
    assert model.cost_per_replica_hour is None


def test_a_negative_cost_is_refused(as_staff) -> None:  # type: ignore[no-untyped-def]
    CatalogModelFactory(name="costed")
    response = as_staff.patch(f"{MODELS}costed/", {"cost_per_replica_hour": "-1"}, format="json")
    assert response.status_code == 400
    assert "cost_per_replica_hour" in response.json()


def test_only_staff_write_the_cost(as_owner, anonymous) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="costed")
    for client in (as_owner, anonymous):
        response = client.patch(f"{MODELS}costed/", {"cost_per_replica_hour": "9"}, format="json")
        assert response.status_code in (401, 403)
    model.refresh_from_db()
    assert model.cost_per_replica_hour is None


def test_the_admin_shows_the_cost_and_the_replica_hours() -> None:
    model = CatalogModelFactory(name="costed")
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    url = f"/admin/inference/catalogmodel/{model.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert b'name="cost_per_replica_hour"' in page.content
    ReplicaHours.objects.create(catalog_model=model, hour=T0.replace(minute=0, second=0))
    assert client.get("/admin/inference/replicahours/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_reconcilers_at_once_count_an_interval_once(unreachable) -> None:  # type: ignore[no-untyped-def]
    """The status rows are locked before they are read: the second reconciler waits for the
    first to commit, then starts from its observation (0 replicas now), adding nothing."""
    from django.db import connection

    model = CatalogModelFactory()
    ModelDeploymentStatus.objects.create(
        catalog_model=model, deployment="d", state="running", replicas_running=3
    )
    seen_at = datetime.now(UTC) - timedelta(seconds=12)
    ModelDeploymentStatus.objects.filter(catalog_model=model).update(updated_at=seen_at)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            deployment_reconcile()
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total = ReplicaHours.objects.filter(catalog_model=model).aggregate(s=Sum("replica_seconds"))
    # One interval (from the old observation to the first reconciler's) at 3 replicas, not two:
    # at most 3 x the time up to the last observation, which two counts would exceed.
    last = ModelDeploymentStatus.objects.get(catalog_model=model).updated_at
    assert 36.0 <= total["s"] <= 3 * (last - seen_at).total_seconds() + 1e-6
