"""The turbocast demo application: ``create_app`` configures and wires things up."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from app import config, extensions
from app.celery_app import celery_init_app
from turbocast import dom_id

logger = logging.getLogger(__name__)


def _configure_logging(level: str) -> None:
    # Only when nothing else (gunicorn --log-config, celery, pytest) configured logging.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        )


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create the app: defaults, then the environment, then ``test_config``.

    :param test_config: settings that win over everything else (tests use it).
    """
    app = Flask(__name__)
    app.config.update(config.DEFAULTS)
    app.config.update(config.from_environ())
    if test_config is not None:
        app.config.update(test_config)
    _configure_logging(str(app.config["LOG_LEVEL"]))
    if not app.config["SECRET_KEY"]:
        if not (app.debug or app.testing):
            # A known key lets anyone forge a session cookie (and so take over another
            # browser's pushes) or sign any stream name: never serve with one.
            raise config.ConfigError(config.UNSIGNED_REFUSAL)
        logger.warning(
            "SECRET_KEY is not set: using a random key for this %s process",
            "debug" if app.debug else "testing",
        )
        app.config["SECRET_KEY"] = secrets.token_hex(32)

    app.config["CELERY"] = config.celery_config(app.config)

    # turbo.to_*_later() enqueue on the demo's own Celery app, never on Celery's default.
    extensions.turbo.init_app(app, celery=celery_init_app(app))

    os.makedirs(app.instance_path, exist_ok=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = config.database_url(app.config, app.instance_path)
    extensions.db.init_app(app)
    app.add_template_global(dom_id)

    from app.demo import bp as demo_bp

    app.register_blueprint(demo_bp)
    _create_tables(app)
    return app


def _create_tables(app: Flask, attempts: int = 3) -> None:
    # Every web and worker process runs this at start, possibly at the same moment: a
    # process that lost the race to create a table finds it there on its next try.
    for attempt in range(1, attempts + 1):
        try:
            with app.app_context():
                extensions.db.create_all()
            return
        except SQLAlchemyError:
            if attempt == attempts:
                raise
            logger.info("creating the tables raced another process; trying again")
