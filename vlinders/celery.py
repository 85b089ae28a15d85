"""The Celery application. Workers run ``celery -A vlinders worker``; beat uses the database
scheduler of django-celery-beat so operators can change schedules in the admin."""

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")

app = Celery("vlinders")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender: Any = None, **kwargs: Any) -> None:
    """Treat each task like a request: close the database connection only when it is broken or
    older than DATABASE_CONN_MAX_AGE. (CELERY_DB_REUSE_MAX turns off Celery's own handling, which
    closes every connection around every task: one new Postgres connection per usage batch.)"""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return  # runs inside the caller's connection and transaction
    from django.db import close_old_connections

    close_old_connections()
