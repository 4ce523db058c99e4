"""Celery workers for turbocast: ``celery -A workers.celery worker`` and ``... beat``.

Importing this package has no side effects; ``workers.celery`` creates the
Flask app and the Celery app bound to it.
"""
