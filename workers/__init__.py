"""Celery workers: tasks that push Turbo Streams. Filled in with the Celery app."""
