"""The API's routes for trainings and the models they make: start, stop and follow a run, list models and
checkpoints (``engine.api`` serves them)."""
from __future__ import annotations

import json

from starlette.requests import Request

from engine import jobs
from engine.api_requests import (ApiError, allowed_datasets, check_fields, flag_field, model_id_field,
                                 query_flag, settings_field, text_field)
from engine.pretrained import pretrained_entry
from engine.training.config import TrainingConfig, config_with_changes
from storage import db as store

_JSON_COLUMNS = ("config", "recommended_postprocess", "postprocess", "datasets")


def _decoded(row: dict) -> dict:
    """A registry row with its JSON text columns as JSON values."""
    return {k: (json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) and v else v) for k, v in row.items()}


def training_start(request: Request, body: dict) -> tuple[int, dict]:
    """POST /training/start: ``{model_id[, resume, training_config]}`` (re)starts or continues a model;
    ``{name, dataset[, training_config, plan]}`` creates one and queues it (``dataset``: a folder, or a list of
    folders that the run trains on together), planned for this machine
    (``engine.training.planner``; the keys of ``training_config`` are kept) unless ``"plan": false``. A new
    model's answer carries ``plan`` (``Plan.to_dict()``, or None) and ``plan_text`` (a sentence, or None)."""
    if "model_id" in body:
        check_fields(body, {"model_id"}, {"resume", "training_config", "queue"})
        model_id, resume = model_id_field(body), flag_field(body, "resume")
        row = store.get_model(model_id)
        if row["status"] == "completed" and not resume:
            raise store.WrongStateError(f"Model {model_id!r} has already completed: send \"resume\": true to continue "
                                        "it from its last.pt, or create a new model to train again.")
        # the stored config (the plan's choices included) is the base; only the fields sent change
        changes = settings_field(body, "training_config") if "training_config" in body else {}
        config = config_with_changes(json.loads(row["config"]), changes)
        task_id = jobs.start_training(model_id, config, resume=resume, queue=body.get("queue"))
    else:
        check_fields(body, {"name", "dataset"}, {"training_config", "plan", "queue"})
        name = text_field(body, "name", "'unet-dice-v1'")
        folder = allowed_datasets(body["dataset"])
        sent = settings_field(body, "training_config") if "training_config" in body else {}
        config = TrainingConfig.from_dict(sent)  # the one check of what the caller sent
        plan = None
        if "plan" not in body or flag_field(body, "plan"):
            from engine.training.planner import plan_for_folder

            config, plan = plan_for_folder(config, set(sent), folder)
        model_id = jobs.submit_training(name, folder, config, plan=plan.to_dict() if plan else None,
                                        queue=body.get("queue"))
        task_id = store.get_model(model_id)["task_id"]
        return 202, {"model_id": model_id, "task_id": task_id, "status": "queued",
                     "plan": plan.to_dict() if plan else None, "plan_text": plan.explain() if plan else None}
    return 202, {"model_id": model_id, "task_id": task_id, "status": "queued"}


def training_stop(request: Request, body: dict) -> tuple[int, dict]:
    """POST /training/stop ``{model_id}``: outcome ``stopping`` (a running run) or ``cancelled`` (a queued one)."""
    check_fields(body, {"model_id"})
    model_id = model_id_field(body)
    return 200, {"model_id": model_id, "outcome": jobs.stop_training(model_id)}


def training_status(request: Request, body: None) -> tuple[int, dict]:
    """GET /training/status/{model_id}[?history=1]: ``python -m engine status --json``'s object, plus the
    per-epoch metrics under ``history`` when asked."""
    model_id = request.path_params["model_id"]
    history = query_flag(request, "history")
    jobs.recover_if_no_worker()
    status = jobs.training_status(model_id)
    if history:
        status["history"] = store.model_metrics(model_id)
    return 200, status


def models(request: Request, body: None) -> tuple[int, dict]:
    """GET /models[?status=…]: every model's row, newest first."""
    status = request.query_params.get("status")
    if status is not None and status not in store.STATUSES:
        raise ApiError(400, f"?status= takes one of {', '.join(store.STATUSES)}, not {status!r}.")
    jobs.recover_if_no_worker()
    return 200, {"models": [_decoded(row) for row in store.list_models(status=status)]}


def model_checkpoints(request: Request, body: None) -> tuple[int, dict]:
    """GET /models/{model_id}/checkpoints: that model's checkpoint files (best, last, then epochs)."""
    return 200, {"checkpoints": store.model_checkpoints(request.path_params["model_id"])}


def checkpoints(request: Request, body: None) -> tuple[int, dict]:
    """GET /checkpoints: the shipped pretrained model, then the checkpoints of every completed model."""
    shipped = pretrained_entry()
    return 200, {"checkpoints": ([shipped] if shipped else []) + store.all_checkpoints()}
