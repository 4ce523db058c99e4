"""Celery bound to the Flask app: every task runs inside ``app.app_context()``.

This is Flask's own Celery pattern (docs/patterns/celery.rst): tasks can call
``render_template`` and use extensions, and views can enqueue tasks, because
``create_app`` sets up the same Celery app in the web process too. It is not made
Celery's default app: views enqueue on ``app.extensions["celery"]`` by name, and
turbocast on the app ``create_app`` hands it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app from ``app.config["CELERY"]`` and keep it in ``app.extensions``.

    :param app: the Flask app whose context tasks run in.
    """

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    app.extensions["celery"] = celery_app
    return celery_app
