"""Process wiring: the Celery app, its configuration, and per-process resources."""
