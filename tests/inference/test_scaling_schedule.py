"""Scheduled scaling (``inference/scaling_schedule.py``): the window arithmetic at fixed times
(boundaries, midnight wrap, overlaps, the platform time zone), the windows' rules, the service
(only changed models, one apply, an audit record each, idempotent), the beat task, the renderer's
use of the scheduled minimum, the management API and the staff catalog page.

The service applies to a Ray dashboard that does not answer (a closed port): the apply is
recorded as ``failed`` with the config it tried to send, which is what these tests read. The
in-place apply on a real Ray is ``tests/inference/test_scaling_ray.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from inference.deployment import render_applications, render_spec
from inference.models import CatalogModel, DeploymentRevision, ScalingWindow
from inference.scaling_schedule import (
    local_time,
    scaling_schedule_apply,
    scaling_window_validate,
    scaling_windows_set,
    scheduled_min_replicas,
    window_covers,
)
from inference.tasks import apply_scaling_schedule
from tenants.models import AuditEvent
from tests.factories import CatalogModelFactory, UserFactory

NIGHT = {"starts_at": time(22), "ends_at": time(6)}  # wraps past midnight


@pytest.mark.parametrize(
    ("at", "covered"),
    [
        (time(8, 59, 59), False),
        (time(9), True),  # starts_at is inside
        (time(12), True),
        (time(16, 59), True),
        (time(17), False),  # ends_at is outside
    ],
)
def test_a_day_window_covers_from_its_start_up_to_its_end(at: time, covered: bool) -> None:
    assert window_covers(starts_at=time(9), ends_at=time(17), at=at) is covered


@pytest.mark.parametrize(
    ("at", "covered"),
    [
        (time(21, 59), False),
        (time(22), True),
        (time(23, 59, 59), True),
        (time(0), True),  # midnight itself
        (time(5, 59), True),
        (time(6), False),
        (time(12), False),
    ],
)
def test_a_night_window_wraps_past_midnight(at: time, covered: bool) -> None:
    assert window_covers(**NIGHT, at=at) is covered


def test_a_window_that_ends_where_it_starts_covers_the_whole_day() -> None:
    for at in (time(0), time(7), time(6, 59), time(23, 59)):
        assert window_covers(starts_at=time(7), ends_at=time(7), at=at)


def window(starts: int, ends: int, low: int) -> ScalingWindow:
    return ScalingWindow(starts_at=time(starts), ends_at=time(ends), min_replicas=low)


def test_overlapping_windows_take_the_largest_minimum() -> None:
    windows = [window(22, 6, 0), window(0, 2, 3), window(1, 4, 2)]
    assert scheduled_min_replicas(windows, at=time(23)) == 0
    assert scheduled_min_replicas(windows, at=time(0, 30)) == 3
    assert scheduled_min_replicas(windows, at=time(1, 30)) == 3  # 0, 3 and 2 overlap
    assert scheduled_min_replicas(windows, at=time(3)) == 2
    assert scheduled_min_replicas(windows, at=time(12)) is None  # the catalog's own applies
    assert scheduled_min_replicas([], at=time(12)) is None
    # The order windows are listed in does not matter.
    assert scheduled_min_replicas(list(reversed(windows)), at=time(1, 30)) == 3


def test_the_time_of_day_is_the_platform_time_zone(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TIME_ZONE = "Europe/Amsterdam"  # UTC+1 in December, UTC+2 in July
    assert local_time(datetime(2026, 12, 1, 23, 30, tzinfo=UTC)) == time(0, 30)
    assert local_time(datetime(2026, 7, 1, 21, 0, tzinfo=UTC)) == time(23, 0)


@pytest.mark.django_db
def test_window_rules() -> None:
    model = CatalogModelFactory(min_replicas=1, max_replicas=3)
    scaling_window_validate(window=ScalingWindow(catalog_model=model, min_replicas=3, **NIGHT))
    with pytest.raises(ValidationError) as too_many:
        scaling_window_validate(window=ScalingWindow(catalog_model=model, min_replicas=4, **NIGHT))
    assert "max_replicas (3)" in str(too_many.value)
    with pytest.raises(ValidationError) as zero:
        scaling_window_validate(window=ScalingWindow(catalog_model=model, min_replicas=0, **NIGHT))
    assert "scale_to_zero" in str(zero.value)
    to_zero = CatalogModelFactory(min_replicas=0, max_replicas=2, scale_to_zero=True)
    scaling_window_validate(window=ScalingWindow(catalog_model=to_zero, min_replicas=0, **NIGHT))


def at(hour: int, minute: int = 0) -> datetime:
    return timezone.make_aware(datetime(2026, 12, 1, hour, minute))


def rendered_min(config: dict[str, Any], model: CatalogModel) -> int:
    """The ``min_replicas`` a recorded Serve config gives the model's deployment."""
    from inference.deployment import deployment_name

    name = deployment_name(model.name)
    app = next(app for app in config["applications"] if app["name"] == name)
    return int(app["deployments"][0]["autoscaling_config"]["min_replicas"])


@pytest.fixture
def ray_unreachable(settings):  # type: ignore[no-untyped-def]
    settings.VLINDERS_RAY_DASHBOARD_URL = "http://127.0.0.1:9"  # discard: refused at once
    return settings


@pytest.mark.django_db
def test_the_service_changes_only_models_whose_minimum_changes_and_applies_once(
    ray_unreachable,
) -> None:  # type: ignore[no-untyped-def]
    night = CatalogModelFactory(name="night-down", min_replicas=2, max_replicas=4)
    ScalingWindow.objects.create(catalog_model=night, min_replicas=1, **NIGHT)
    busy = CatalogModelFactory(name="busy-up", min_replicas=1, max_replicas=4)
    ScalingWindow.objects.create(
        catalog_model=busy, starts_at=time(9), ends_at=time(17), min_replicas=3
    )
    plain = CatalogModelFactory(name="plain", min_replicas=1, max_replicas=2)
    off = CatalogModelFactory(name="disabled", status=CatalogModel.Status.DISABLED)
    ScalingWindow.objects.create(catalog_model=off, min_replicas=1, **NIGHT)

    # 23:00: only the night window applies.
    outcome = scaling_schedule_apply(now=at(23))
    assert outcome.changed == {"night-down": (None, 1)}
    assert DeploymentRevision.objects.count() == 1
    revision = outcome.revision
    assert revision is not None
    assert revision.outcome == DeploymentRevision.Outcome.FAILED  # Ray does not answer here
    assert rendered_min(revision.config, night) == 1
    assert rendered_min(revision.config, busy) == 1
    assert rendered_min(revision.config, plain) == 1
    assert CatalogModel.objects.get(pk=off.pk).scheduled_min_replicas is None
    [event] = AuditEvent.objects.filter(action="catalog_model.schedule_applied")
    assert event.organization is None
    assert event.actor is None
    assert event.target_id == str(night.pk)
    assert event.before == {"name": "night-down", "scheduled_min_replicas": None}
    assert event.after == {"name": "night-down", "scheduled_min_replicas": 1, "at": "23:00"}

    # The same time again (beat runs every minute): nothing changes, nothing is applied.
    again = scaling_schedule_apply(now=at(23, 1))
    assert again.changed == {}
    assert again.revision is None
    assert DeploymentRevision.objects.count() == 1
    assert AuditEvent.objects.filter(action="catalog_model.schedule_applied").count() == 1

    # Noon: the night window ends and the busy one starts: two models, still one apply.
    noon = scaling_schedule_apply(now=at(12))
    assert noon.changed == {"night-down": (1, None), "busy-up": (None, 3)}
    assert DeploymentRevision.objects.count() == 2
    assert noon.revision is not None
    assert rendered_min(noon.revision.config, night) == 2  # the catalog's own minimum again
    assert rendered_min(noon.revision.config, busy) == 3


@pytest.mark.django_db
def test_the_beat_task_runs_the_service(ray_unreachable, settings) -> None:  # type: ignore[no-untyped-def]
    assert settings.CELERY_BEAT_SCHEDULE["apply-scaling-schedule"] == {
        "task": "inference.apply_scaling_schedule",
        "schedule": 60.0,
    }
    model = CatalogModelFactory(max_replicas=2)
    ScalingWindow.objects.create(
        catalog_model=model, starts_at=time(0), ends_at=time(0), min_replicas=2
    )
    assert apply_scaling_schedule.apply().get() == {"changed": 1, "outcome": "failed"}
    assert apply_scaling_schedule.apply().get() == {"changed": 0, "outcome": "unchanged"}
    assert CatalogModel.objects.get(pk=model.pk).scheduled_min_replicas == 2


@pytest.mark.django_db
def test_the_renderer_uses_the_scheduled_minimum_and_keeps_the_pair_valid(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_SCALE_TO_ZERO_IDLE_S = 120
    steady = CatalogModelFactory(name="steady", min_replicas=1, max_replicas=2)
    CatalogModel.objects.filter(pk=steady.pk).update(scheduled_min_replicas=3)  # > max
    guarded = CatalogModelFactory(name="guarded", min_replicas=2, max_replicas=2)
    CatalogModel.objects.filter(pk=guarded.pk).update(scheduled_min_replicas=0)  # no zero
    sleepy = CatalogModelFactory(name="sleepy", min_replicas=0, max_replicas=2, scale_to_zero=True)
    CatalogModel.objects.filter(pk=sleepy.pk).update(scheduled_min_replicas=1)

    apps = {app["name"]: app for app in render_applications(render_spec())}

    def options(model: CatalogModel) -> dict[str, Any]:
        from inference.deployment import deployment_name

        return dict(apps[deployment_name(model.name)]["deployments"][0]["autoscaling_config"])

    assert options(steady) == {
        "min_replicas": 3,
        "initial_replicas": 3,
        "max_replicas": 3,
        "target_ongoing_requests": 16,
    }
    assert options(guarded)["min_replicas"] == 1
    assert "downscale_to_zero_delay_s" not in options(guarded)
    assert options(sleepy)["min_replicas"] == 1
    assert options(sleepy)["downscale_to_zero_delay_s"] == 120.0
    # Outside its windows a scale-to-zero model renders 0, warm at first, idle after 120 s.
    CatalogModel.objects.filter(pk=sleepy.pk).update(scheduled_min_replicas=None)
    apps = {app["name"]: app for app in render_applications(render_spec())}
    assert options(sleepy) == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 16,
        "downscale_to_zero_delay_s": 120.0,
    }


@pytest.mark.django_db
def test_windows_set_replaces_the_schedule_with_an_audit_record(staff) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="windows", min_replicas=1, max_replicas=3)
    scaling_windows_set(
        model=model, windows=[{**NIGHT, "min_replicas": 2}], actor=staff
    )  # fmt: skip
    with pytest.raises(ValidationError):
        scaling_windows_set(model=model, windows=[{**NIGHT, "min_replicas": 9}], actor=staff)
    assert list(model.scaling_windows.values_list("min_replicas", flat=True)) == [2]
    [event] = AuditEvent.objects.filter(action="catalog_model.schedule_set")
    assert event.actor == staff
    assert event.after["scaling_windows"] == [
        {"starts_at": "22:00", "ends_at": "06:00", "min_replicas": 2}
    ]
    # The same schedule again: no change, no record.
    scaling_windows_set(model=model, windows=[{**NIGHT, "min_replicas": 2}], actor=staff)
    assert AuditEvent.objects.filter(action="catalog_model.schedule_set").count() == 1


@pytest.mark.django_db
def test_the_api_reads_and_writes_scaling_windows(as_staff) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="api-sched", min_replicas=1, max_replicas=2)
    url = f"/api/v1/models/{model.name}/"
    written = as_staff.patch(
        url,
        {"scaling_windows": [{"starts_at": "22:00", "ends_at": "06:00", "min_replicas": 2}]},
        format="json",
    )
    assert written.status_code == 200, written.content
    assert written.json()["scaling_windows"] == [
        {"starts_at": "22:00:00", "ends_at": "06:00:00", "min_replicas": 2}
    ]
    assert written.json()["scheduled_min_replicas"] is None
    refused = as_staff.patch(
        url,
        {"scaling_windows": [{"starts_at": "22:00", "ends_at": "06:00", "min_replicas": 0}]},
        format="json",
    )
    assert refused.status_code == 400
    assert "scale_to_zero" in refused.content.decode()
    assert as_staff.get(url).json()["scaling_windows"][0]["min_replicas"] == 2


@pytest.mark.django_db
def test_the_catalog_page_shows_the_schedule(staff) -> None:  # type: ignore[no-untyped-def]
    model = CatalogModelFactory(name="paged", min_replicas=1, max_replicas=3)
    ScalingWindow.objects.create(catalog_model=model, min_replicas=2, **NIGHT)
    CatalogModel.objects.filter(pk=model.pk).update(scheduled_min_replicas=2)
    client = Client()
    client.force_login(staff)
    body = client.get("/staff/models/").content.decode()
    assert "22:00 to 06:00 min 2 (now min 2)" in body


@pytest.mark.django_db
def test_the_admin_inline_checks_windows_against_the_model_being_saved() -> None:
    from tests.inference.test_admin import form

    model = CatalogModelFactory(name="inline", min_replicas=1, max_replicas=2)
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    url = f"/admin/inference/catalogmodel/{model.pk}/change/"

    def post(low: str, **fields: str) -> Any:
        data = form(name="inline", max_replicas="2", **fields)
        data.setdefault("cache_ttl_s", "0")  # the response cache's fields, where the form has them
        data.setdefault("price_cache_hit_per_mtok", "0")
        data.update(
            {
                "scaling_windows-TOTAL_FORMS": "1",
                "scaling_windows-INITIAL_FORMS": "0",
                "scaling_windows-0-starts_at": "22:00",
                "scaling_windows-0-ends_at": "06:00",
                "scaling_windows-0-min_replicas": low,
            }
        )
        return client.post(url, data)

    refused = post("0")  # the model does not scale to zero
    assert refused.status_code == 200
    assert "only for a model with scale_to_zero" in refused.content.decode()
    assert post("3").status_code == 200  # more than the max_replicas being saved (2)
    assert not ScalingWindow.objects.exists()
    saved = post("2")
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert list(model.scaling_windows.values_list("min_replicas", flat=True)) == [2]
