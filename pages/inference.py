"""Inference (global): any completed model's checkpoints, grouped by model, or the classical
vesselness baseline; the same tuner; batch jobs over a folder or a zip run by the worker."""
import json

import streamlit as st

from engine.vesselness import BASELINE_NAME
from pages.components import BASELINE_SOURCE, query, run_page
from pages.inference_widgets import batch_controls, batch_jobs, checkpoint_label, start_from, workspace


def main() -> None:
    st.title("Inference")
    ckpts = query("all_checkpoints")  # completed models only
    groups: dict[str, list[dict]] = {}
    for c in ckpts:
        groups.setdefault(c["model_id"], []).append(c)
    names = {mid: f"{cs[0]['model_name']} (val Dice {cs[0].get('best_val_dice') or 0:.3f})" for mid, cs in groups.items()}
    names[BASELINE_SOURCE] = BASELINE_NAME
    options = [BASELINE_SOURCE, *groups]
    a, b = st.columns(2)
    model_id = a.selectbox("Model", options, format_func=names.get, key="inf_model",
                           help="Completed models, and the classical filter that needs no training.")
    if model_id == BASELINE_SOURCE:
        source, model = BASELINE_SOURCE, None
        b.caption("The classical vesselness filter: the baseline trained models must beat.")
    else:
        by_label = {checkpoint_label(c): c["path"] for c in groups[model_id]}
        source = by_label[b.selectbox("Checkpoint", list(by_label), key=f"inf_ckpt_{model_id}")]
        model = next((m for m in query("list_models", "completed") if m["id"] == model_id), None)
    defaults = start_from(model, "inf")
    workspace(source, key="inf", defaults=defaults)
    st.divider()
    batch_controls(source, None if model is None else model["id"], "inf")
    batch_jobs("inf")
    if model and model.get("recommended_postprocess"):
        with st.expander("The model's recommended post-processing"):
            st.json(json.loads(model["recommended_postprocess"]))


run_page(main, "showing the inference page")
