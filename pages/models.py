"""Models: every run in a sortable table; one run's config, curves, checkpoints and recommended
post-processing; several runs' curves overlaid; metrics CSV export; checkpoint download, sizes and
deletion (older epoch checkpoints, one checkpoint, the whole model)."""
import json
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.errors import UserError
from ui.charts import curves_figure
from ui.formatting import age_text, datasets_text, run_duration, settings_from_rows, stop_reason_text
from ui.readers import forget_queries, list_models, model_checkpoints, model_metrics
from ui.runtime import run_page
from ui.housekeeping import checkpoint_controls
from ui.training_continue import continue_controls
from ui.training_monitor import status_text
from storage.db import ACTIVE_STATUSES as ACTIVE



def table(models: list[dict]) -> None:
    # the id last: it is the widest column and also in the "Details of" list, so at 1280 px it is the one cut
    rows = [{"name": m["name"], "status": status_text(m), "best val Dice": m.get("best_val_dice"),
             "best epoch": m.get("best_epoch"), "epochs": m.get("epochs_run") or 0, "stop reason": stop_reason_text(m.get("stop_reason")),
             "duration (s)": run_duration(m), "created": m["created_at"][:19].replace("T", " "), "id": m["id"]}
            for m in models]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="models_table",
                 column_config={"best val Dice": st.column_config.NumberColumn(format="%.3f"),
                                "duration (s)": st.column_config.NumberColumn(format="%.0f"),
                                "created": st.column_config.TextColumn(width="medium")})  # 19 characters, not cut


def checkpoints(model: dict) -> None:
    ckpts = model_checkpoints(model["id"])
    if not ckpts:
        st.caption("No checkpoint yet.")
        return
    monitor = model.get("monitor") or "val_dice"
    st.dataframe([{"file": c["name"], "kind": c["kind"], "epoch": c["epoch"],
                   monitor.replace("_", " "): "— (no validation images)" if c["metric"] is None else f"{c['metric']:.4f}",
                   "size (MB)": round((c["size_bytes"] or 0) / 1e6, 2)} for c in ckpts],
                 hide_index=True, width="stretch", key="models_ckpt_table")
    names = [c["name"] for c in ckpts]
    pick = st.selectbox("Checkpoint to download", names, key="models_ckpt_pick")
    path = Path(next(c["path"] for c in ckpts if c["name"] == pick))
    st.download_button(f"Download {pick}", lambda: path.read_bytes(), file_name=f"{model['name']}_{pick}",
                       mime="application/octet-stream", key="models_ckpt_download", on_click="ignore")
    checkpoint_controls(model, ckpts)


def delete_controls(model: dict) -> None:
    mid = model["id"]
    if model["status"] in ACTIVE:
        st.button("Delete this model", key="models_delete", disabled=True)
        st.caption(f"It is {model['status']}: stop it on the Train page and wait until it has ended to delete it.")
        return
    if not st.session_state.get("models_confirm") == mid:
        st.button("Delete this model", key="models_delete", on_click=st.session_state.__setitem__,
                  args=("models_confirm", mid))
        return
    st.warning(f"Delete {model['name']} with its checkpoints and curves? This cannot be undone.")
    a, b = st.columns(2)
    a.button("Yes, delete", key="models_delete_yes", type="primary", on_click=_delete, args=(mid,))
    b.button("Cancel", key="models_delete_no", on_click=st.session_state.__setitem__, args=("models_confirm", None))


def _delete(mid: str) -> None:
    from engine.housekeeping import delete_model

    st.session_state["models_confirm"] = None
    try:
        delete_model(mid)  # refuses, with a sentence, a run that started meanwhile
    except UserError as exc:
        st.session_state["models_message"] = ("error", str(exc))
        return
    st.session_state["models_message"] = ("success", f"Deleted model {mid}.")
    st.session_state["models_detail"] = None
    forget_queries()


def detail(model: dict) -> None:
    mid = model["id"]
    st.subheader(f"{model['name']} · {status_text(model)}")
    if model["status"] in ACTIVE:  # it has not ended: no "Ended because"
        state = {"queued": "Waiting for the worker to start it", "running": "Training now",
                 "stopping": "Stopping at the end of the current batch"}[model["status"]]
        st.write(f"{state} · duration {age_text(run_duration(model))} · {datasets_text(model)}")
    else:
        reason = stop_reason_text(model.get("stop_reason"))
        st.write(f"Ended because: **{reason or model.get('error') or 'unknown'}** · duration "
                 f"{age_text(run_duration(model))} · {datasets_text(model)}")
    st.page_link("pages/model_inference.py", label="Open its inference page", icon=":material/search_insights:",
                 query_params={"model": mid})  # in this tab: a new one would start a new browser session
    metrics = model_metrics(mid)
    if metrics:
        st.plotly_chart(curves_figure([(model["name"], metrics, model.get("best_epoch"))]), key="models_curves")
        st.download_button("Export metrics (CSV)", pd.DataFrame(metrics).to_csv(index=False),
                           file_name=f"{model['name']}_metrics.csv", mime="text/csv", key="models_csv",
                           on_click="ignore")
    a, b = st.columns(2)
    with a:
        st.markdown("**Training configuration**")
        st.json(json.loads(model["config"]), expanded=False)
        st.markdown("**Where its settings came from**")
        sources = settings_from_rows(model)
        if sources:
            st.dataframe(sources, hide_index=True, width="stretch", key="models_settings_from")
        else:
            st.caption("Every setting is the default." if sources == [] else
                       "Not recorded: the run was queued before runs recorded it.")
    with b:
        st.markdown("**Recommended post-processing**")
        rec = model.get("recommended_postprocess")
        if rec:
            st.json(json.loads(rec))
        else:
            st.caption(calibration_words(model))
    st.markdown("**Checkpoints**")
    checkpoints(model)
    continue_controls(model, "models_continue")
    delete_controls(model)


def calibration_words(model: dict) -> str:
    """Why a model has no recommended post-processing, in words."""
    try:
        config = json.loads(model.get("config") or "{}")
    except json.JSONDecodeError:
        config = {}
    if not config.get("calibrate_postprocess", True):
        return "None: calibration was switched off for this run; the tuner opens with the defaults."
    if config.get("val_fraction", 0.2) == 0:
        return ("None: every image trained, so none was left to calibrate the settings on; the tuner opens with "
                "the defaults.")
    if model["status"] in ACTIVE:
        return "Calibrated on the validation images when the run ends."
    return "None: the run ended before calibration (it runs at the end of a run that was not stopped)."


def progress(models: list[dict]) -> list[tuple]:
    return [(m["id"], m["status"], m.get("epochs_run")) for m in models]


@st.fragment(run_every=3)
def refresh_while_active(drawn: list[tuple]) -> None:
    """While a run is queued or running, redraw the page when a run's status or epoch count changed."""
    if progress(list_models()) != drawn:
        st.rerun(scope="app")


def main() -> None:
    st.title("Models")
    from engine.jobs import recover_if_no_worker  # here, not at import: it opens the queue, which a
    #   data home that cannot be written refuses; inside the page, that refusal is shown as a sentence

    recover_if_no_worker()  # a run whose worker died reads "failed", not "running", even with no worker up
    message = st.session_state.pop("models_message", None)
    if message:
        getattr(st, message[0])(message[1])
    models = list_models()
    if not models:
        st.info("No models yet: start one on the Train page.")
        return
    table(models)
    if any(m["status"] in ACTIVE for m in models):
        refresh_while_active(progress(models))
    ids = [m["id"] for m in models]
    label = {m["id"]: f"{m['name']} ({status_text(m)}, {m['id']})" for m in models}
    wanted = st.query_params.get("model")
    if wanted in ids and "models_detail" not in st.session_state:
        st.session_state["models_detail"] = wanted
    compare = st.multiselect("Overlay the curves of", ids, format_func=label.get, key="models_compare")
    if compare:
        by_id = {m["id"]: m for m in models}
        runs = [(by_id[i]["name"], model_metrics(i), by_id[i].get("best_epoch")) for i in compare]
        st.plotly_chart(curves_figure(runs), key="models_overlay")
    pick = st.selectbox("Details of", ids, format_func=label.get, key="models_detail", index=None,
                        placeholder="Choose a model")
    if pick in ids:
        with st.container(border=True):
            detail(next(m for m in models if m["id"] == pick))


run_page(main, "showing the Models page")
