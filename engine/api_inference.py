"""The API's routes for batch inference: start a job on a model's checkpoint (or the shipped model, or the
classical filter), follow it, cancel it, download its results (``engine.api`` serves them)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.requests import Request

from engine import jobs
from engine.api_requests import ApiError, allowed_path, check_fields, model_id_field, text_field
from engine.inference.predictor import CLASSICAL, SHIPPED, Predictor
from engine.pretrained import PRETRAINED_ID, pretrained_available
from storage import db as store


def inference_start(request: Request, body: dict) -> tuple[int, dict]:
    """POST /inference/start: ``{model_id[, which: best|last] | checkpoint, input[, postprocess][, scale]}``.

    ``model_id`` may be ``"baseline"`` (the classical vesselness filter) or ``"pretrained"`` (the shipped
    model); ``postprocess`` is an object of
    post-processing settings, ``"recommended"`` (the model's calibrated settings) or absent (the defaults).
    """
    check_fields(body, {"input"}, {"checkpoint", "model_id", "which", "postprocess", "scale", "queue"})
    if ("checkpoint" in body) == ("model_id" in body):
        raise ApiError(400, f"Give either 'model_id' (with 'which': 'best' or 'last', or the id '{CLASSICAL}') or "
                            "'checkpoint' (the path of a .pt file), not both or neither.")
    model_id = None
    if "checkpoint" in body:
        if "which" in body:
            raise ApiError(400, "'which' chooses a checkpoint of 'model_id'; with 'checkpoint' leave it out.")
        checkpoint = str(allowed_path(body["checkpoint"], "checkpoint"))
    else:
        model_id = model_id_field(body)
        if model_id == PRETRAINED_ID:
            checkpoint, model_id = SHIPPED, None
            if body.get("postprocess") == "recommended":  # a missing file is refused below, with its sentence
                recommended = Predictor(SHIPPED).recommended_settings() if pretrained_available() else None
                body = {**body, "postprocess": recommended or {}}
        elif model_id == CLASSICAL:
            checkpoint = CLASSICAL
        else:
            checkpoint = _checkpoint_of(model_id, body.get("which", "best"))
    source = allowed_path(body["input"], "input")
    settings = body.get("postprocess")
    if settings == "recommended":
        settings = _recommended(model_id)
    elif settings is not None and not isinstance(settings, dict):
        raise ApiError(400, "'postprocess' must be an object of post-processing settings such as "
                            f"{{\"threshold\": 0.5}}, or \"recommended\"; got {json.dumps(settings)}.")
    job_id = jobs.start_inference(checkpoint, source, settings, model_id=model_id, scale=body.get("scale", "auto"),
                                  queue=body.get("queue"))
    return 202, {"job_id": job_id, "status": "queued"}


def _checkpoint_of(model_id: str, which: Any) -> str:
    if which not in ("best", "last"):
        raise ApiError(400, f"'which' takes \"best\" or \"last\", not {json.dumps(which)}.")
    found = [c for c in store.model_checkpoints(model_id) if c["name"] == f"{which}.pt"]
    if not found:
        raise store.WrongStateError(f"Model {model_id!r} has no {which}.pt yet: wait until an epoch has ended, "
                                    "or choose the other checkpoint.")
    return found[0]["path"]


def _recommended(model_id: str | None) -> dict:
    if model_id is None or model_id == CLASSICAL:
        raise ApiError(400, "\"recommended\" post-processing belongs to a trained model: give its 'model_id', or "
                            "send the settings as an object.")
    recommended = store.get_model(model_id)["recommended_postprocess"]
    if not recommended:
        raise store.WrongStateError(f"Model {model_id!r} has no recommended post-processing (it is made when a "
                                    "training ends with calibrate_postprocess on): send the settings as an object.")
    return json.loads(recommended)


def inference_status(request: Request, body: None) -> tuple[int, dict]:
    """GET /inference/status/{job_id}: state, counts and output files of a batch inference job."""
    return 200, jobs.inference_status(request.path_params["job_id"])


def inference_results(request: Request, body: None) -> tuple[int, Path]:
    """GET /inference/results/{job_id}: the job's results.zip (masks, probability maps, stats.csv,
    settings.json) as ``application/zip``; 409 while it is not written yet."""
    job_id = request.path_params["job_id"]
    status = jobs.inference_status(job_id)
    if status["results_zip"] is None:
        if status["status"] in store.JOB_ACTIVE_STATUSES:
            raise store.WrongStateError(f"Job {job_id!r} is {status['status']}: its results zip is written when it "
                                        "ends; ask again once GET /api/v1/inference/status says completed.")
        raise store.WrongStateError(f"Job {job_id!r} ended {status['status']} without a results zip"
                                    + (f" ({status['error']})" if status.get("error") else "") + ".")
    return 200, Path(status["results_zip"])


def inference_cancel(request: Request, body: dict) -> tuple[int, dict]:
    """POST /inference/cancel ``{job_id}``: outcome ``cancelled`` (a queued job) or ``cancelling`` (a running one)."""
    check_fields(body, {"job_id"})
    job_id = text_field(body, "job_id", "an id from POST /api/v1/inference/start")
    return 200, {"job_id": job_id, "outcome": jobs.cancel_inference(job_id)}
