"""The routes through which a worker on another machine trains a run: claim it, download its data sets and
``last.pt``, report its events, upload its checkpoints and end it (``engine.api_workers`` lists them)."""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from engine.api_archives import folder_archive
from engine.api_worker_requests import UploadRefused, asking_worker, body_number, held_run, read_upload
from engine.errors import UserError
from engine.jobs import lifecycle
from storage import db as store
from storage import paths

CHECKPOINT_NAMES = ("best.pt", "last.pt")
EPOCH_CHECKPOINT = re.compile(r"epoch_\d{3,6}\.pt")  # what checkpoint_every writes: epoch_004.pt
# what a remote training reports (checkpoints: PUT); "plan": the run planned again on the worker's device
EVENT_TYPES = ("plan", "start", "batch", "epoch_end", "calibration")


def training_claim(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/claim ``{worker_id, resume}``: ``claimed`` true (with ``config``,
    ``plan``, ``datasets`` [{sha256, bytes, name}, …] (every data set the run trains on, in order; ``dataset``
    is the first), ``resume``), false (no free slot: ask again), or null (not queued)."""
    from engine.training.data import load_dataset

    model_id, worker = request.path_params["model_id"], asking_worker(body, request)
    claimed = lifecycle.claim_training(model_id, worker)
    if not claimed:
        return 200, {"claimed": claimed}
    row = store.get_model(model_id)
    try:
        sets = []
        for folder in map(Path, store.model_datasets(row)):
            if not folder.is_dir():
                raise UserError(f"The data set folder {folder} is no longer on the dashboard's machine: register the "
                                "data set again and start a new run.")
            digest, archive = folder_archive(folder)
            # the set's name as the dashboard knows it: the worker trains on it under its content hash
            sets.append({"sha256": digest, "bytes": archive.stat().st_size, "name": load_dataset(folder).name})
        resume = bool(body.get("resume"))
        if resume and not (paths.checkpoints_dir(model_id) / "last.pt").is_file():
            raise UserError(f"Model {model_id!r} has no last.pt on the dashboard to continue from: start it again "
                            "without resume.")
    except (UserError, OSError) as exc:
        lifecycle.fail_training(model_id, str(exc))
        raise
    return 200, {"claimed": True, "name": row["name"], "config": json.loads(row["config"]),
                 "plan": json.loads(row["plan"]) if row.get("plan") else None, "resume": resume,
                 "dataset": sets[0], "datasets": sets}


def training_dataset(request: Request, body: None) -> Path:
    """GET /workers/trainings/{id}/dataset[?index=N]: the run's Nth data set (default the first) as a zip."""
    row = held_run(request.path_params["model_id"], asking_worker(None, request))
    folders = store.model_datasets(row)
    index = request.query_params.get("index", "0")
    if not index.isdigit() or int(index) >= len(folders):
        raise UserError(f"?index= takes a number from 0 to {len(folders) - 1}: the run has {len(folders)} data "
                        f"set(s), not {index!r}.")
    return folder_archive(Path(folders[int(index)]))[1]


def training_last(request: Request, body: None) -> Path:
    """GET /workers/trainings/{id}/last.pt: the checkpoint a continued run starts from."""
    model_id = request.path_params["model_id"]
    held_run(model_id, asking_worker(None, request))
    last = paths.checkpoints_dir(model_id) / "last.pt"
    if not last.is_file():
        raise store.WrongStateError(f"Model {model_id!r} has no last.pt to continue from.")
    return last


def training_state(request: Request, body: None) -> tuple[int, dict]:
    """GET /workers/trainings/{id}/status: ``{status}``; ``stopping`` (or anything but running) means stop."""
    return 200, {"status": store.model_status(request.path_params["model_id"])}


_recorders: dict[tuple[str, str], lifecycle.ProgressRecorder] = {}
_recorders_lock = threading.Lock()


def _recorder(model_id: str, worker: str, row: dict) -> lifecycle.ProgressRecorder:
    with _recorders_lock:
        key = (model_id, worker)
        if key not in _recorders:
            budget = float(json.loads(row["config"]).get("max_minutes") or 0.0)
            _recorders[key] = lifecycle.ProgressRecorder(model_id, None, max_minutes=budget)
        return _recorders[key]


def forget_progress(model_ids: set[str]) -> None:
    """Drop what is kept of these runs' progress: the watchdog failed them, they will not report again."""
    with _recorders_lock:
        for key in [k for k in _recorders if k[0] in model_ids]:
            _recorders.pop(key)


def training_events(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/events ``{worker_id, events: [...]}``: recorded as a local worker's
    (``lifecycle.ProgressRecorder``); answers ``{status}`` so the worker sees a stop request at once."""
    model_id, worker = request.path_params["model_id"], asking_worker(body, request)
    row = held_run(model_id, worker)
    events = body.get("events")
    if not isinstance(events, list) or not all(isinstance(e, dict) and e.get("type") in EVENT_TYPES for e in events):
        raise UserError(f"'events' must be a list of training events of the types {', '.join(EVENT_TYPES)}.")
    recorder = _recorder(model_id, worker, row)
    for event in events:
        if event["type"] == "plan":
            record_worker_plan(model_id, row, event)
        else:
            recorder(event)
    store.beat_active([model_id], [])
    return 200, {"status": store.model_status(model_id)}


def record_worker_plan(model_id: str, row: dict, event: dict) -> None:
    """A worker on another kind of device planned the run again (``planner.replan_for_device``): its config
    and plan replace the registry's, once both are valid and only the planned fields (and the device) changed.

    Raises:
        UserError: the config or plan is not valid, or a field the user chose changed.
    """
    from engine.training.config import TrainingConfig
    from engine.training.planner import PLANNED_FIELDS, Plan

    if not isinstance(event.get("config"), dict) or not isinstance(event.get("plan"), dict):
        raise UserError("A plan event must carry the planned 'config' and 'plan' as JSON objects.")
    config = TrainingConfig.from_dict(event["config"]).to_dict()
    plan = Plan.from_dict(event["plan"]).to_dict()
    stored = TrainingConfig.from_stored(json.loads(row["config"])).to_dict()  # checked when it was submitted
    changed = sorted(k for k in config if config[k] != stored.get(k) and k not in (*PLANNED_FIELDS, "device"))
    if changed:
        raise UserError(f"A worker's plan may change only the planned fields, not {', '.join(changed)}.")
    store.update_model(model_id, config=config, plan=plan)


def check_checkpoint(path: Path, model_id: str) -> dict:
    """Load an uploaded checkpoint the way every checkpoint is loaded (weights only, this format version);
    returns it. Raises UploadRefused (400) with the loader's sentence."""
    from engine.training.checkpoint import load_checkpoint_dict

    try:
        return load_checkpoint_dict(path)
    except UserError as exc:
        raise UploadRefused(400, f"The checkpoint uploaded for model {model_id} was refused: {exc} Nothing was "
                                 "registered.") from None


async def training_checkpoint(request: Request) -> dict:
    """PUT /workers/trainings/{id}/checkpoints/{name}?worker_id=&epoch=&metric= with the file as the body."""
    model_id, name = request.path_params["model_id"], request.path_params["name"]
    worker = asking_worker(None, request)
    if name not in CHECKPOINT_NAMES and not EPOCH_CHECKPOINT.fullmatch(name):
        raise UserError(f"Workers upload {', '.join(CHECKPOINT_NAMES)} and epoch_XXX.pt, not {name!r}.")
    await run_in_threadpool(held_run, model_id, worker)
    data = await read_upload(request)
    return await run_in_threadpool(_register_checkpoint, model_id, name, worker, data, request.query_params)


def _register_checkpoint(model_id: str, name: str, worker: str, data: bytes, query) -> dict:
    folder = paths.checkpoints_dir(model_id)
    tmp = folder / f".{name}.{secrets.token_hex(4)}.upload.tmp"
    try:
        tmp.write_bytes(data)
        ckpt = check_checkpoint(tmp, model_id)
        held_run(model_id, worker)  # still its run after the load, which takes a moment
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    metric = query.get("metric")
    kind = name[:-3] if name in CHECKPOINT_NAMES else "epoch"
    store.add_checkpoint(model_id, int(ckpt.get("epoch") or 0) or None, folder / name, kind,
                         float(metric) if metric not in (None, "", "null") else None)
    if kind == "epoch":  # retention, as for a run on the dashboard's machine: the newest N epoch files stay
        from engine.housekeeping import prune_checkpoints

        prune_checkpoints(model_id)
    return {"name": name, "bytes": len(data), "epoch": ckpt.get("epoch")}


def training_finish(request: Request, body: dict) -> tuple[int, dict]:
    """POST /workers/trainings/{id}/finish ``{worker_id, error}`` or ``{worker_id, epochs_run, best_epoch,
    best_metric, has_best, stop_reason, stop_cause, recommended_postprocess}``."""
    model_id, worker = request.path_params["model_id"], asking_worker(body, request)
    held_run(model_id, worker)
    with _recorders_lock:
        _recorders.pop((model_id, worker), None)
    if body.get("error"):
        lifecycle.fail_training(model_id, str(body["error"])[:2000])
    else:
        stop_reason = body.get("stop_reason")
        if stop_reason not in store.STOP_REASONS:
            raise UserError(f"'stop_reason' must be one of {', '.join(store.STOP_REASONS)}.")
        recommended = body.get("recommended_postprocess")
        lifecycle.finish_training(model_id, lifecycle.training_outcome(
            body_number(body, "epochs_run") or 0, body_number(body, "best_epoch"),
            body_number(body, "best_metric", float),
            bool(body.get("has_best")) and (paths.checkpoints_dir(model_id) / "best.pt").is_file(), stop_reason,
            body.get("stop_cause") if body.get("stop_cause") in ("user", "shutdown") else None,
            recommended if isinstance(recommended, dict) else None))
    return 200, {"status": store.model_status(model_id)}
