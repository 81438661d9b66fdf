"""The Train page's form: every TrainingConfig option, drawn from its spec (``engine.training.config.FIELDS``:
widget, label, section, help), and *Start from the settings of run*."""
from __future__ import annotations

import json

import streamlit as st

from engine.errors import UserError
from engine.training.config import FIELDS, GROUPS, TrainingConfig
from ui.readers import list_models
from storage.db import ACTIVE_STATUSES


def _widget(name: str, default):
    spec, key = FIELDS[name], f"train_cfg_{name}"
    label, group_help = spec.label_of(name), spec.help or None
    if spec.kind is bool:
        return st.toggle(label, value=default, key=key, help=group_help)
    if spec.choices:
        options = list(spec.choices)
        return st.selectbox(label, options, index=options.index(default), key=key, help=group_help)
    if spec.kind is int:
        return st.number_input(label, value=default, step=1, key=key, help=group_help)
    if spec.kind is float:
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


def _label(name: str) -> str:
    return FIELDS[name].label_of(name).lower()


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
        except UserError as exc:
            origin = {"error": str(exc)}
    config = TrainingConfig().with_updates(**values)
    for name in FIELDS:
        s[f"train_cfg_{name}"] = getattr(config, name)
    s["train_form_origin"] = origin


def training_form(defaults: TrainingConfig) -> dict:
    """Every TrainingConfig option, in its section (``FIELDS``), opening on ``defaults``; returns the values the
    widgets hold now, by option name (checked when TrainingConfig is made of them)."""
    values = {}
    by_group = {g: [] for g in GROUPS}
    for name, spec in FIELDS.items():
        by_group[spec.group].append(name)
    for group in GROUPS:
        with st.expander(group, expanded=group == GROUPS[0]):
            cols = st.columns(3)
            for i, name in enumerate(by_group[group]):
                with cols[i % 3]:
                    values[name] = _widget(name, getattr(defaults, name))
    return values


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
    values = {name: s.get(f"train_cfg_{name}", getattr(defaults, name)) for name in FIELDS}
    return values, changed_fields(defaults, values)
