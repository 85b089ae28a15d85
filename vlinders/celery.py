"""The Celery application. Workers run ``celery -A vlinders worker``; beat uses the database
scheduler of django-celery-beat so operators can change schedules in the admin."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")

app = Celery("vlinders")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
