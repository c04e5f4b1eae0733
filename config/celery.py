"""The Celery application: settings come from Django's, under the CELERY_ prefix."""

import os

from celery import Celery, signals

from config import graceful_stop

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("salvo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# A graceful stop lets a running task finish cleanly instead of killing it mid-chunk, and
# beat its tick (config/graceful_stop.py). weak=False: module functions, kept anyway.
signals.worker_process_init.connect(graceful_stop.mark_pool_process, weak=False)
signals.worker_shutting_down.connect(graceful_stop.request_stop, weak=False)
signals.task_prerun.connect(graceful_stop.task_started, weak=False)
signals.task_postrun.connect(graceful_stop.task_finished, weak=False)
signals.beat_init.connect(graceful_stop.let_beat_finish_its_tick, weak=False)
