"""The Celery settings Legato's app shares with the bench's raw-Celery baseline.

JSON only, late acks, prefetch 1, task events on (workers/app.py says why). The baseline
(bench/rawapp.py) imports only this module, so it measures the engine, not a difference in
settings, without loading the engine itself.
"""

WIRE_AND_DELIVERY: dict[str, object] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
    "task_send_sent_event": True,
}
