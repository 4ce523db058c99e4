"""The Celery app: the Flask app's, with the workers' tasks and the beat schedule.

``celery -A workers.celery worker`` and ``celery -A workers.celery beat`` load this.
"""

from __future__ import annotations

from celery import Celery

from app import create_app
from workers.schedule import beat_schedule

flask_app = create_app()
celery_app: Celery = flask_app.extensions["celery"]
celery_app.conf.include = [*celery_app.conf.include, "workers.tasks"]
celery_app.conf.beat_schedule = beat_schedule(float(flask_app.config["DEMO_CLOCK_SECONDS"]))

__all__ = ["celery_app", "flask_app"]
