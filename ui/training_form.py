"""Widgets of the Train page: the data-set chooser, the TrainingConfig form and the live monitor."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time

import numpy as np
import streamlit as st

from engine.errors import UserError, user_error
from engine.training import config as train_engine
from engine.training.config import TrainingConfig
from ui.charts import curves_figure
from ui.formatting import age_text, stop_reason_text, val_dice_words
from ui.overlays import overlay_bytes
from ui.readers import forget_queries, list_models, model_metrics
from ui.runtime import logger, sentence_of
from storage import paths
from engine.progress import run_budget_s, run_progress
from storage.db import ACTIVE_STATUSES, TRAINING_STATUSES

# Field -> the form's group; fields not listed go to "Advanced". The help comes with the option's spec (FIELDS).
GROUPS = ("Basics", "Loss", "Regularisation", "Early stopping and LR", "Advanced")
FIELD_GROUPS: dict[str, str] = {
    "epochs": "Basics", "batch_size": "Basics", "patch_size": "Basics", "steps_per_epoch": "Basics",
    "learning_rate": "Basics", "val_fraction": "Basics", "seed": "Basics", "loss_function": "Loss",
    "dice_weight": "Loss", "focal_alpha": "Loss", "focal_gamma": "Loss", "tversky_alpha": "Loss",
    "tversky_beta": "Loss", "weight_decay": "Regularisation", "dropout_rate": "Regularisation",
    "ema_decay": "Regularisation", "augment": "Regularisation", "max_zoom": "Regularisation",
    "any_angle": "Regularisation", "camera_augment": "Regularisation",
    "early_stopping_monitor": "Early stopping and LR", "early_stopping_patience": "Early stopping and LR",
    "min_delta": "Early stopping and LR", "lr_schedule": "Early stopping and LR",
    "min_learning_rate": "Early stopping and LR", "plateau_factor": "Early stopping and LR",
    "plateau_patience": "Early stopping and LR", "max_minutes": "Basics", "base_channels": "Advanced",
    "depth": "Advanced", "channel": "Advanced", "clahe": "Advanced", "normalization": "Advanced",
    "optimizer": "Advanced", "device": "Advanced", "precision": "Advanced", "num_threads": "Advanced",
    "checkpoint_every": "Advanced", "calibrate_postprocess": "Advanced",
}
LABELS = {"ema_decay": "Weight-average decay", "lr_schedule": "LR schedule", "min_learning_rate": "Minimum learning rate", "clahe": "CLAHE",
          "max_zoom": "Maximum zoom", "any_angle": "Rotate by any angle", "camera_augment": "Other-camera share",
          "calibrate_postprocess": "Calibrate post-processing", "early_stopping_monitor": "Early-stopping monitor",
          "early_stopping_patience": "Early-stopping patience"}


def _choices(field: str) -> tuple | None:
    return train_engine.FIELDS[field].choices or None


def _widget(field: dataclasses.Field, default):
    key = f"train_cfg_{field.name}"
    group_help = train_engine.FIELDS[field.name].help or None
    label = LABELS.get(field.name) or field.name.replace("_", " ").capitalize()
    if isinstance(default, bool):
        return st.toggle(label, value=default, key=key, help=group_help)
    options = _choices(field.name)
    if options:
        return st.selectbox(label, list(options), index=list(options).index(default), key=key, help=group_help)
    if isinstance(default, int):
        return st.number_input(label, value=default, step=1, key=key, help=group_help)
    if isinstance(default, float):
        return st.number_input(label, value=default, format="%g", step=None, key=key, help=group_help)
    return st.text_input(label, value=str(default), key=key, help=group_help)


def form_defaults() -> TrainingConfig:
    """The values the training form opens with: TrainingConfig's own defaults, never another run's (on a shared
    dashboard one person's run would set the next person's form). Starting from an earlier run's settings is an
    explicit choice (``start_from_picker``), which puts them into the form's fields.

    A fresh page watches the newest run (the one running, else the last one queued), so the monitor keeps
    showing its final status and curves after it ended.
    """
    s = st.session_state
    if "train_watch_chosen" not in s:
        rows = list_models()
        newest = next((m for m in rows if m["status"] in ACTIVE_STATUSES), rows[0] if rows else None)
        if newest is not None:
            s.setdefault("train_watch", newest["id"])
        s["train_watch_chosen"] = True
    return TrainingConfig()


START_FROM = "train_start_from"  # the run whose settings the form starts from; "" for the defaults


def start_from_picker() -> None:
    """"Start from the settings of run …": the defaults (the first choice) or an earlier run's settings, put
    into the form's fields when chosen; the fields its plan chose for its machine are not copied."""
    s = st.session_state
    rows = list_models()
    names = {m["id"]: f"{m['name']} ({m['id']})" for m in rows}
    if s.get(START_FROM, "") not in names:  # a run deleted meanwhile, or a first visit
        s[START_FROM] = ""
    st.selectbox("Start from the settings of run", ["", *names], format_func=lambda i: names.get(i, "the defaults"),
                 key=START_FROM, on_change=_start_from,
                 help="The form opens on the defaults. Choose an earlier run to copy its settings into the form; "
                      "the ones its plan chose for its own machine are left at the defaults.")
    origin = s.get("train_form_origin")
    if origin and origin.get("error"):
        st.warning(origin["error"])
    elif origin:
        copied = ", ".join(f"{_label(k)} {v}" for k, v in origin["values"].items()) or "nothing (it used the defaults)"
        text = f"Copied from run {origin['run']}: {copied}."
        if origin["planned"]:
            text += (f" Not copied, because its plan chose them for its machine: "
                     f"{', '.join(_label(k) for k in origin['planned'])}; Measure this machine to plan them here.")
        st.caption(text)


def _label(field: str) -> str:
    return (LABELS.get(field) or field.replace("_", " ").capitalize()).lower()


def run_settings(row: dict) -> tuple[dict, list[str]]:
    """(the settings of the run ``row`` that are not the defaults, less those its plan chose; the names of those
    planned fields). Raises UserError when this version cannot read its settings."""
    try:
        plan = json.loads(row["plan"]) if row.get("plan") else None
        planned = set((plan or {}).get("changed") or {})
        config = TrainingConfig.from_dict(json.loads(row["config"])).to_dict()
    except (json.JSONDecodeError, TypeError, AttributeError):
        raise UserError(f"The settings of run {row['id']} cannot be read by this version: the form keeps the "
                        "defaults.") from None
    defaults = TrainingConfig().to_dict()
    values = {k: v for k, v in config.items() if k not in planned and v != defaults[k]}
    return values, sorted(planned & set(defaults))


def _start_from() -> None:
    """Put the chosen run's settings (or the defaults) into the form's fields."""
    s = st.session_state
    run, values, origin = s.get(START_FROM), {}, None
    row = next((m for m in list_models() if m["id"] == run), None) if run else None
    if row is not None:
        try:
            values, planned = run_settings(row)
            origin = {"run": run, "values": values, "planned": planned}
        except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
            origin = {"error": sentence_of(exc)}
    config = TrainingConfig().with_updates(**values)
    for f in dataclasses.fields(TrainingConfig):
        s[f"train_cfg_{f.name}"] = getattr(config, f.name)
    s["train_form_origin"] = origin


def training_form(defaults: TrainingConfig) -> dict:
    """Every TrainingConfig option, grouped, opening on ``defaults``; returns the values the form shows, by
    field name (checked when TrainingConfig is made of them): the
    values the widgets hold now."""
    values = {}
    by_group = {g: [] for g in GROUPS}
    for f in dataclasses.fields(TrainingConfig):
        by_group[FIELD_GROUPS.get(f.name, "Advanced")].append(f)
    for group in GROUPS:
        with st.expander(group, expanded=group == "Basics"):
            cols = st.columns(3)
            for i, f in enumerate(by_group[group]):
                with cols[i % 3]:
                    values[f.name] = _widget(f, getattr(defaults, f.name))
    return values


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------
def registered_datasets() -> list[str]:
    """The data sets in the data home, newest first."""
    root = paths.datasets_dir()
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.name for p in sorted(found, key=lambda p: (-p.stat().st_mtime, p.name))]


def first_usable(names: list[str]) -> int:
    """Index of the first data set in ``names`` that loads (the default choice); 0 when none does."""
    for i, name in enumerate(names):
        try:
            dataset_summary(str(paths.datasets_dir() / name))
        except Exception as exc:  # noqa: BLE001 - a data set that does not load is skipped; a bug is raised
            sentence_of(exc)
            continue
        return i
    return 0


def dataset_delete_controls(name: str) -> None:
    """"Delete this data set", then a confirmation; refused (with the reason) while a run uses it."""
    s = st.session_state
    message = s.pop("train_delete_msg", None)
    if message:
        getattr(st, message[0])(message[1])
    if s.get("train_delete_confirm") != name:
        st.button("Delete this data set", key="train_delete", on_click=s.__setitem__, args=("train_delete_confirm", name))
        return
    st.warning(f"Delete the data set {name} and all its files for good? Models trained on it keep their checkpoints.")
    a, b, _ = st.columns([1, 1, 4])
    a.button("Yes, delete it", key="train_delete_yes", type="primary", on_click=_delete_dataset, args=(name,))
    b.button("Cancel", key="train_delete_no", on_click=s.pop, args=("train_delete_confirm", None))


def _delete_dataset(name: str) -> None:
    from engine.housekeeping import delete_dataset

    s = st.session_state
    s.pop("train_delete_confirm", None)
    try:
        delete_dataset(name)
    except UserError as exc:
        s["train_delete_msg"] = ("error", str(exc))
        return
    s.pop("train_registered", None)
    s["train_delete_msg"] = ("success", f"The data set {name} was deleted.")


def more_datasets(first: str) -> list[str]:
    """"Also train on": further data sets for the run that trains on ``first``, registered ones and folders,
    each in its own layout and resolution; returns their paths, in order (none: the run trains on ``first``)."""
    s = st.session_state
    root = paths.datasets_dir()
    names = [n for n in registered_datasets() if str(root / n) != first]
    if "train_more_registered" in s:  # a set deleted meanwhile, or the one now chosen above, cannot stay picked
        s["train_more_registered"] = [n for n in s["train_more_registered"] if n in names]
    picked = st.multiselect("Also train on (registered data sets)", names, key="train_more_registered",
                            help="A run can train on several data sets at once, each in its own layout and "
                                 "resolution: a share of every set is held out for validation, and patches come "
                                 "from each set equally often (Balance datasets).")
    text = st.text_area("Also train on (folders, one per line)", key="train_more_folders", height=68,
                        placeholder="../shared/data/chase_db1/training")
    return [str(root / n) for n in picked] + [line.strip() for line in text.splitlines() if line.strip()]


def datasets_problem(folders: list[str]) -> str | None:
    """The sentence that refuses the run's list of data sets (a set chosen twice, a folder without vessel
    masks …), or None when every set can train together."""
    from engine.training.data import load_datasets

    try:
        load_datasets(folders)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
        return sentence_of(exc)
    return None


@st.cache_data(ttl=10, show_spinner=False, max_entries=32)
def dataset_summary(path: str) -> tuple[dict, bytes | None]:
    """The data set's summary and a PNG of its first image with the vessel mask overlaid."""
    from engine.training.data import load_dataset

    ds = load_dataset(path)
    image, mask, _ = ds.raw(0)
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return {**ds.summary(), "scale": ds.scale_summary()}, overlay_bytes(image, digest, mask, np.zeros_like(mask))


def generate_synthetic(n_images: int, size: int, seed: int) -> str:
    from engine.training.synthetic import make_synthetic_dataset

    folder = paths.datasets_dir() / f"synthetic_{n_images}x{size}_seed{seed}"
    if not (folder / "images").is_dir():
        tmp = folder.with_name(f".{folder.name}.tmp")
        make_synthetic_dataset(tmp, n_images=n_images, size=size, seed=seed)
        tmp.replace(folder)
    logger.info("synthetic data set at %s", folder)
    return str(folder)


# --------------------------------------------------------------------------------------------
# Submitting (in the button's callback: it runs to the end even when a second click arrives)
# --------------------------------------------------------------------------------------------
def submission_key(held: bool) -> str:
    """The key of the Start form as drawn now: one per form submission, checked by the run registry.

    A key that queued a run is replaced only when the form is drawn enabled again (``held`` False, a few
    seconds later), so every click of a double click carries the key of the first.
    """
    s = st.session_state
    if "train_form_key" not in s or (s.get("train_form_used") == s["train_form_key"] and not held):
        s["train_form_key"] = secrets.token_hex(8)
    return s["train_form_key"]


def changed_fields(defaults: TrainingConfig, values: dict) -> dict:
    """The fields of ``values`` that differ from ``defaults``: the ones the user set."""
    return {k: v for k, v in values.items() if v != getattr(defaults, k)}


def form_values(defaults: TrainingConfig) -> tuple[dict, dict]:
    """(every training option as the submitted form holds it, those the user changed from the defaults), for
    the callbacks of the form's buttons.

    A callback runs before the script body, so it cannot be handed what ``training_form`` returns: that
    was drawn before the user edited the form. The submitted values are in the widgets' session state
    then, which is where Streamlit's forms-with-callbacks pattern reads them.
    """
    s = st.session_state
    values = {f.name: s.get(f"train_cfg_{f.name}", getattr(defaults, f.name)) for f in dataclasses.fields(TrainingConfig)}
    return values, changed_fields(defaults, values)


def _plan_key(dataset: str | None, changed: dict) -> str:
    # a plan holds for one data set and one set of user changes (the time budget among them)
    return json.dumps([dataset, changed], sort_keys=True, default=str)


def request_measurement() -> None:
    """The Measure button's callback: the page's next run draws Start disabled, then measures."""
    st.session_state["train_measuring"] = True


def measuring() -> bool:
    """True while a measurement was asked for and has not ended (Start is drawn disabled meanwhile)."""
    return bool(st.session_state.get("train_measuring"))


def measure_if_requested(defaults: TrainingConfig) -> None:
    """Measure when the Measure button asked for it, with a spinner, then draw the page again so Start is
    enabled with the plan: a click on Start while the steps were timed would have queued the form unplanned."""
    if not measuring():
        return
    try:
        with st.spinner("Measuring this machine: timing a few training steps…", show_time=True):
            measure_plan(defaults)
    finally:
        st.session_state["train_measuring"] = False
    st.rerun()


def measure_plan(defaults: TrainingConfig) -> None:
    """"Measure this machine": plan the form's run for this machine and its time budget, keeping the
    fields the user changed; the plan is kept for this data set and these changes until they change."""
    from engine.training.planner import plan_for_folder

    s = st.session_state
    s["train_plan_error"] = None
    values, changed = form_values(defaults)
    dataset = s.get("train_dataset")
    if not dataset:
        s["train_plan_error"] = "Choose a data set first: the plan depends on its smallest image."
        return
    try:
        config, plan = plan_for_folder(TrainingConfig.from_dict(values), set(changed), dataset)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is logged
        if (error := user_error(exc)) is not None:
            s["train_plan_error"] = str(error)
            return
        logger.exception("could not measure this machine")
        s["train_plan_error"] = ("The machine could not be measured because of an unexpected error; details are in "
                                 "logs/dashboard.log. Start training still works with the form's values.")
        return
    if plan is None:
        s["train_plan_error"] = "The data set has fewer than 2 images: training needs at least 2."
        return
    s["train_plan"] = {"key": _plan_key(dataset, changed), "config": config.to_dict(), "plan": plan.to_dict(),
                       "text": plan.explain()}


def planned_run(defaults: TrainingConfig) -> tuple[TrainingConfig, dict | None]:
    """The config Start training queues and its plan: the measured plan when it was made for the form's
    current data set and changes, else the form's values as they are (and None)."""
    s = st.session_state
    values, changed = form_values(defaults)
    saved = s.get("train_plan")
    if saved and saved["key"] == _plan_key(s.get("train_dataset"), changed):
        return TrainingConfig.from_dict(saved["config"]), saved["plan"]
    return TrainingConfig.from_dict(values), None


def plan_line(defaults: TrainingConfig, dataset: str | None, values: dict) -> None:
    """The "Plan for this machine" line under the form, for ``dataset`` and the form's ``values``."""
    s = st.session_state
    saved, error = s.get("train_plan"), s.get("train_plan_error")
    changed = changed_fields(defaults, values)
    if error:
        st.error(error)
    elif saved and saved["key"] == _plan_key(dataset, changed):
        st.info(f"Plan for this machine: {saved['text']} Start training uses it; the fields you changed stay "
                "as you set them.")
    elif saved:
        st.caption("Plan for this machine: the form or the data set changed since the last measurement; "
                   "Measure this machine again to plan for them (Start training uses the form as it is).")
    else:
        st.caption("Plan for this machine: Measure this machine times a few training steps (about 10 seconds) and "
                   "chooses patch size, batch size, precision and, with a time budget, the U-Net width, epochs and "
                   "steps per epoch (a checkpoint at least every tenth of the budget); the fields you "
                   "changed stay as you set them. Without it, Start training uses the form as it is.")


def submit_callback(defaults: TrainingConfig) -> None:
    from engine.jobs import submit_training
    from engine.jobs.training import settings_sources
    from storage.db import DuplicateSubmissionError

    s = st.session_state
    s["train_message"] = None
    name, dataset, key = (s.get("train_name") or "").strip(), s.get("train_dataset"), s.get("train_form_key")
    if not dataset:
        s["train_message"] = ("error", "Choose a data set first (a folder, a zip, a registered or a synthetic one).")
        return
    try:
        config, plan = planned_run(defaults)
        origin = s.get("train_form_origin") or {}
        sources = settings_sources(config.to_dict(), plan, origin.get("values"), origin.get("run", ""), "typed")
        model_id = submit_training(name or f"unet-{time.strftime('%m%d-%H%M%S')}", dataset, config,
                                   submission_key=key, plan=plan, queue=s.get("train_queue"), sources=sources)
    except DuplicateSubmissionError as exc:  # the second click of a double click: the first one's run stands
        s["train_watch"] = exc.model_id
        s["train_message"] = ("success", f"Queued model {exc.model_id}: it starts as soon as the worker has a free "
                                         "slot (a second click did not queue it twice).")
        forget_queries()
        return
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is logged
        if (error := user_error(exc)) is not None:
            s["train_message"] = ("error", str(error))
            return
        logger.exception("could not queue a training run")
        s["train_message"] = ("error", "The run could not be queued because of an unexpected error; details are in "
                                       "logs/dashboard.log.")
        return
    s["train_form_used"] = key
    s["train_submitted_at"] = time.monotonic()  # draws the Start button disabled for SUBMIT_HOLD_S
    s["train_watch"], s["train_scroll"] = model_id, True
    planned = " It runs as planned for this machine." if plan else ""
    s["train_message"] = ("success", f"Queued model {model_id}: it starts as soon as the worker has a free slot; "
                                     f"follow it in the Training monitor below.{planned}")
    forget_queries()


@st.fragment(run_every=2)
def submit_message() -> None:
    """The outcome of the last Start click; "Queued model …" goes away once that run has ended."""
    s = st.session_state
    message = s.get("train_message")
    if message and message[0] == "success" and s.get("train_watch"):
        row = next((m for m in list_models() if m["id"] == s["train_watch"]), None)
        if row is not None and row["status"] not in ACTIVE_STATUSES:  # None: a read from before
            message = s["train_message"] = None
    if message:
        getattr(st, message[0])(message[1])


def scroll_to_monitor() -> None:
    """Bring the Training monitor into view, once, after a run was queued: it is drawn below the long form,
    out of sight of the Start button. (Streamlit has no scroll command: a tiny script in an iframe does it.)"""
    st.iframe("""<script>
      const doc = window.parent.document;
      let tries = 0;
      const go = () => {
        const h = [...doc.querySelectorAll('h2')].find(e => e.innerText.trim().startsWith('Training monitor'));
        if (h) h.scrollIntoView({block: 'start'}); else if (tries++ < 50) setTimeout(go, 100);
      };
      go();
    </script>""", height=1, tab_index=-1, alt="scrolls the Training monitor into view")


SUBMIT_HOLD_S = 3.0  # the Start button stays disabled this long after a run was queued


def start_button_held() -> bool:
    """True while the Start button is shown disabled after a submission; clears the hold once it expired."""
    at = st.session_state.get("train_submitted_at")
    if at is not None and time.monotonic() - at >= SUBMIT_HOLD_S:
        st.session_state.pop("train_submitted_at", None)
        return False
    return at is not None


def release_start_button() -> None:
    """Called by the monitor (which re-runs every 2 s): redraw the page once the hold has expired."""
    at = st.session_state.get("train_submitted_at")
    if at is not None and time.monotonic() - at >= SUBMIT_HOLD_S:
        st.session_state.pop("train_submitted_at", None)
        st.rerun(scope="app")


# --------------------------------------------------------------------------------------------
# Continuing a stopped or failed run from its last.pt
# --------------------------------------------------------------------------------------------
@st.cache_data(ttl=60, show_spinner=False, max_entries=64)
def resume_point(path: str, mtime: float) -> dict:
    """What last.pt holds for continuing: its epoch, epochs without improvement, minutes trained."""
    from engine.training.checkpoint import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path)  # CheckpointError (a UserError) with a sentence; not cached
    stopper = ckpt.get("early_stopping") or {}
    return {"epoch": int(ckpt.get("epoch") or 0), "wait": int(stopper.get("wait") or 0),
            "minutes": float(ckpt.get("elapsed_seconds") or 0.0) / 60}


def _restart(model_id: str, config_json: str, key: str) -> None:
    """Queue a run that was stopped before its first epoch again, from the start, with its own settings."""
    from engine.jobs import start_training

    try:
        start_training(model_id, json.loads(config_json))
        st.session_state[f"{key}_msg_{model_id}"] = ("success", "Queued again from the start.")
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
        st.session_state[f"{key}_msg_{model_id}"] = ("error", sentence_of(exc))
    forget_queries()


def continue_controls(row: dict, key: str) -> None:
    """"Continue training" for a stopped or failed run: queues it with resume=True from its last.pt."""
    mid, s = row["id"], st.session_state
    message = s.get(f"{key}_msg_{mid}")
    if message:  # a success is shown once; an error stays until the next click
        getattr(st, message[0])(message[1])
        if message[0] == "success":
            s.pop(f"{key}_msg_{mid}")
    if row["status"] == "stopped":  # stopped before its first epoch ended: nothing to continue, all to redo
        st.caption("It was stopped before its first epoch finished, so there is no checkpoint to continue from.")
        st.button("Start it again", key=f"{key}_restart_{mid}", on_click=_restart, args=(mid, row["config"], key))
        return
    if row["status"] not in ("completed", "failed"):
        return
    last = paths.checkpoints_dir(mid) / "last.pt"
    if not last.is_file():
        if row["status"] == "failed":
            st.caption("No last.pt was saved (no epoch finished), so this run cannot be continued: start a new one.")
        return
    try:
        point = resume_point(str(last), last.stat().st_mtime)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is raised
        st.warning(f"This run cannot be continued: {sentence_of(exc)}")
        return
    config = json.loads(row["config"])
    saved, patience, budget = point["epoch"], config.get("early_stopping_patience", 0), config.get("max_minutes", 0)
    # Not an st.form: Enter in a form's lone number input submits it, which continued runs twice unasked.
    # Here Enter only sets the number; the button alone queues the continuation.
    st.markdown(f"**Continue training** from last.pt (epoch {saved}, {age_text(point['minutes'] * 60)} trained): "
                "the curves, the optimiser, the schedule and early stopping carry on.")
    cols = st.columns(3)
    if budget:  # a run with a time budget: asked in minutes; the clock ends it (more_time_changes)
        plan = json.loads(row["plan"]) if row.get("plan") else {}
        more = float((plan or {}).get("max_minutes") or budget)
        minutes = cols[0].number_input("More minutes of training", min_value=0.1, max_value=10_080.0, value=more,
                                       step=0.5, format="%g", key=f"{key}_more_minutes_{mid}",
                                       help="How much longer it trains from here; the run ends when that time is up.")
        adds = (f"It adds {minutes:g} minutes: the time budget goes from {point['minutes']:.2f} minutes trained to "
                f"{point['minutes'] + minutes:.2f}, and the run ends when that time is up, whatever epoch it reached.")
    else:
        fields = {"epochs": max(saved + 1, config["epochs"] if config["epochs"] > saved else 2 * saved)}
        until = cols[0].number_input("Train until epoch", min_value=saved + 1, max_value=100_000, step=1,
                                     value=fields["epochs"], key=f"{key}_epochs_{mid}",
                                     help="Raise it to train longer than the original limit; with the cosine "
                                          "schedule the learning rate follows the new length from here.")
        adds = (f"It adds {int(until) - saved} epochs: from epoch {saved + 1} to epoch {int(until)}, unless early "
                "stopping ends it sooner.")
    if patience and point["wait"] >= patience:
        cols[1].number_input("Early-stopping patience", min_value=point["wait"] + 1, max_value=100_000, step=1,
                             value=point["wait"] + patience, key=f"{key}_early_stopping_patience_{mid}",
                             help=f"It stopped after {point['wait']} epochs without improvement; allow more.")
    st.caption(adds)
    st.button("Continue training", key=f"{key}_go_{mid}", on_click=_continue, args=(mid, config, key, point))


def continue_changes(model_id: str, config: dict, key: str, point: dict) -> dict:
    """The fields the Continue form changes, from its widgets' values: more minutes for a run with a time
    budget (its total budget and epoch limit follow), else the epoch to train until; the patience when shown."""
    from engine.training.config import more_time_changes

    s = st.session_state
    if config.get("max_minutes"):
        changes = more_time_changes(config, point["minutes"], point["epoch"],
                                    float(s[f"{key}_more_minutes_{model_id}"]))
    else:
        changes = {"epochs": int(s[f"{key}_epochs_{model_id}"])}
    if f"{key}_early_stopping_patience_{model_id}" in s:
        changes["early_stopping_patience"] = int(s[f"{key}_early_stopping_patience_{model_id}"])
    return changes


def _continue(model_id: str, config: dict, key: str, point: dict) -> None:
    from engine.jobs import start_training
    from engine.training.config import config_with_changes

    s = st.session_state
    recent = time.monotonic() - s.get(f"{key}_queued_{model_id}", -1e9) < 15
    try:
        changes = continue_changes(model_id, config, key, point)
        start_training(model_id, config_with_changes(config, changes), resume=True)
    except Exception as exc:  # noqa: BLE001 - a user's error is its sentence; a bug is logged
        if (error := user_error(exc)) is not None:  # a second click of a double click finds it queued already
            s[f"{key}_msg_{model_id}"] = ("info", "It was queued a moment ago; it was not queued twice.") if recent \
                else ("error", str(error))
        else:
            logger.exception("could not continue model %s", model_id)
            s[f"{key}_msg_{model_id}"] = ("error", "The run could not be queued because of an unexpected error; "
                                                   "details are in logs/dashboard.log.")
    else:
        how_long = (f"for {float(s[f'{key}_more_minutes_{model_id}']):g} more minutes (until "
                    f"{changes['max_minutes']:g} minutes trained in all)" if config.get("max_minutes")
                    else f"up to epoch {changes['epochs']} ({changes['epochs'] - point['epoch']} more epochs)")
        s[f"{key}_msg_{model_id}"] = ("success", f"Queued: it continues {how_long} as soon as the worker has a free "
                                                 "slot (watch it on the Train page).")
        s["train_watch"], s[f"{key}_queued_{model_id}"] = model_id, time.monotonic()
    forget_queries()


# --------------------------------------------------------------------------------------------
# Live monitor
# --------------------------------------------------------------------------------------------
def status_text(row: dict) -> str:
    """A run's status in words: a run the user stopped reads "stopped (by you) after epoch 2 of 5", not
    "completed" (the registry's status, which says it kept a best checkpoint)."""
    if row.get("stop_reason") == "user_stop" and row.get("status") in ("completed", "stopped"):
        if run_budget_s(row) and row.get("trained_s") is not None:  # the budget, not the epoch limit, measures it
            return (f"stopped (by you) after epoch {row.get('epochs_run') or 0}, {age_text(row['trained_s'])} of "
                    f"{age_text(run_budget_s(row))} trained")
        return f"stopped (by you) after epoch {row.get('epochs_run') or 0} of {row.get('total_epochs') or '?'}"
    return row.get("status") or ""


def _stop(model_id: str) -> None:
    from engine.jobs import stop_training

    try:
        st.session_state[f"train_stop_msg_{model_id}"] = stop_training(model_id)
    except UserError as exc:
        st.session_state[f"train_stop_msg_{model_id}"] = str(exc)
    st.session_state["train_watch"] = model_id  # keep showing it once it stopped, with Continue training
    forget_queries()


def run_monitor(row: dict, smoothing: float) -> None:
    """Progress, ETA, curves and the Stop button of one run."""
    mid, status = row["id"], row["status"]
    epoch, total = row.get("current_epoch") or 0, row.get("total_epochs") or 1
    shown = status_text(row)
    st.subheader(f"{row['name']} · {shown}" + (f" ({stop_reason_text(row['stop_reason'])})"
                                               if row.get("stop_reason") and shown == status else ""))
    if status in TRAINING_STATUSES:
        batch = f"batch {row.get('batch') or 0} / {row.get('batches') or '?'}"
        budget = run_budget_s(row)
        if budget:  # the time budget ends the run, not the epoch limit the plan raised past it
            text = (f"{age_text(row.get('trained_s'))} of {age_text(budget)} trained, epoch {epoch}, {batch}, "
                    f"ETA {age_text(row.get('eta_s'))}")
        else:
            text = f"epoch {epoch} / {total}, {batch}, ETA {age_text(row.get('eta_s'))}"
        st.progress(run_progress(row) or 0.0, text=text)
    elif status == "queued":
        st.info("Waiting for the worker to start it.")
    elif status == "failed" and row.get("error"):
        st.error(f"The run failed: {row['error']}")
    metrics = model_metrics(mid)
    best = row.get("best_epoch")
    if metrics:
        since, patience = row.get("epochs_since_best"), row.get("patience")
        if row.get("best_val_dice") is None and best:
            st.caption(f"Newest epoch {best}: every image trains, so no validation score judges the epochs.")
        else:
            st.caption(f"Best epoch {best or '—'} ({val_dice_words(row.get('best_val_dice'))}) · epochs since best: "
                       f"{since if since is not None else '—'} / {patience or '∞'}")
        st.plotly_chart(curves_figure([(row["name"], metrics, best)], smoothing), key=f"train_curves_{mid}")
    if status in ("queued", "running"):
        st.button("Stop", key=f"train_stop_{mid}", on_click=_stop, args=(mid,))
    elif status == "stopping":
        st.button("stopping…", key=f"train_stop_{mid}", disabled=True)
    elif status == "failed" or row.get("stop_reason") in ("user_stop", "time_limit"):
        continue_controls(row, "train_continue")
