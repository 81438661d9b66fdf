"""The background worker: a Huey queue on SQLite that trains models and runs batch inference.

``huey`` (``engine.jobs.queue``) is what the worker runs: ``huey_consumer engine.jobs.huey -k thread
-w 2 -m 0.5``. Importing this package registers every task on it: ``engine.jobs.training``
(``train_model_task``, ``stop_training_task``), ``engine.jobs.inference`` (``run_inference_task``) and
``engine.jobs.liveness`` (the start-up hook and the periodic ``check_stale_runs``).

The record of every job is its row in the run registry (``storage.db``), never a Huey result; its states
and their changes are ``engine.jobs.lifecycle``, shared with workers on other machines. With
``ML_MANAGER_QUEUE=redis://...`` the same tasks go to named Redis queues (``engine.jobs.queue.queue_for``). The
Python API below is what the pages, the HTTP API and the CLI call.
"""
from engine.jobs.inference import cancel_inference, inference_status, run_inference_task, start_inference
from engine.jobs.liveness import (BEAT_S, check_stale_runs, recover_if_no_worker, recover_stale_runs,
                                  remove_temp_files, stale_after_s)
from engine.jobs.queue import (current_queue, huey, queue_for, queue_length, queue_names, redis_url,
                               shutting_down)
from engine.jobs.training import (STOP_POLL_S, STOPPED_EARLY, ProgressRecorder, StopPoller, max_trainings,
                                  start_training, stop_training, stop_training_task, submit_training,
                                  train_model_task, training_status)

__all__ = ["BEAT_S", "STOP_POLL_S", "STOPPED_EARLY", "ProgressRecorder", "StopPoller", "cancel_inference",
           "check_stale_runs", "current_queue", "huey", "inference_status", "max_trainings", "queue_for", "queue_length", "queue_names",
           "recover_if_no_worker", "recover_stale_runs", "redis_url", "remove_temp_files", "run_inference_task",
           "shutting_down", "stale_after_s", "start_inference", "start_training", "stop_training",
           "stop_training_task", "submit_training", "train_model_task", "training_status"]
