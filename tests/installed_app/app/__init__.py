"""The shop: a Flask app using turbocast as its README shows (a test fixture).

Settings come from the environment (``FLASK_SECRET_KEY``, ``FLASK_REDIS_URL``,
``FLASK_TICK_SECONDS``); Celery is set up as Flask's Celery pattern does.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask

from turbocast import Turbo

turbo = Turbo()


def celery_init_app(app: Flask) -> Celery:
    """Flask's docs/patterns/celery: tasks run in the app context; kept in app.extensions."""

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(TICK_SECONDS=10)
    app.config.from_prefixed_env()
    app.config["CELERY"] = {
        "broker_url": app.config["REDIS_URL"],
        "task_ignore_result": True,
        "include": ["turbocast.tasks"],
    }
    celery_init_app(app)
    turbo.init_app(app)  # finds the Celery app in app.extensions["celery"]

    from app.views import bp

    app.register_blueprint(bp)
    return app
