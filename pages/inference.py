"""Inference (global): the pretrained model shipped with the program, any completed model's checkpoints
(grouped by model), or the classical vesselness baseline; the same tuner; batch jobs over a folder or a
zip run by the worker."""
import json

import streamlit as st

from engine.pretrained import PRETRAINED_NAME, PRETRAINED_PATH, pretrained_available
from engine.vesselness import BASELINE_NAME
from ui.formatting import val_dice_words
from ui.maps import BASELINE_SOURCE, checkpoint_mtime, dashboard_checkpoint, load_checkpoint
from ui.readers import all_checkpoints, list_models
from ui.runtime import run_page
from ui.inference_workspace import (
    batch_controls, batch_jobs, batch_sentence_key, checkpoint_label, monitor_of, start_from, workspace,
)

PRETRAINED_SOURCE = str(PRETRAINED_PATH)  # a path, so it can never be mistaken for a model id


def main() -> None:
    st.title("Inference")
    ckpts = all_checkpoints()  # completed models only
    groups: dict[str, list[dict]] = {}
    for c in ckpts:
        groups.setdefault(c["model_id"], []).append(c)
    names = {mid: f"{cs[0]['model_name']} ({val_dice_words(cs[0].get('best_val_dice'))})" for mid, cs in groups.items()}
    names |= {BASELINE_SOURCE: BASELINE_NAME, PRETRAINED_SOURCE: PRETRAINED_NAME}
    # The pretrained model first: without a model of one's own, an upload gives a mask at once.
    options = ([PRETRAINED_SOURCE] if pretrained_available() else []) + [BASELINE_SOURCE, *groups]
    a, b = st.columns(2)
    model_id = a.selectbox("Model", options, format_func=names.get, key="inf_model",
                           help="The pretrained model, your completed models, and the classical filter that needs "
                                "no training.")
    recommended = None
    if model_id == BASELINE_SOURCE:
        source, model = BASELINE_SOURCE, None
        b.caption("The classical vesselness filter: the baseline trained models must beat.")
    elif model_id == PRETRAINED_SOURCE:
        source, model = PRETRAINED_SOURCE, None
        b.caption("A U-Net trained on the 20 DRIVE training images, with augmentation that imitates other "
                  "cameras. For research use, like the DRIVE images themselves; not for diagnosis.")
        recommended = load_checkpoint(dashboard_checkpoint(source), checkpoint_mtime(source)).recommended_postprocess
    else:
        model = next((m for m in list_models("completed") if m["id"] == model_id), None)
        by_label = {checkpoint_label(c, monitor_of(model)): c["path"] for c in groups[model_id]}
        source = by_label[b.selectbox("Checkpoint", list(by_label), key=f"inf_ckpt_{model_id}")]
        if model and model.get("recommended_postprocess"):
            recommended = json.loads(model["recommended_postprocess"])
    why = None
    if recommended and source != BASELINE_SOURCE:  # the calibration's sentences, kept in the checkpoint
        why = (load_checkpoint(dashboard_checkpoint(source), checkpoint_mtime(source)).calibration or {}).get(
            "explanation")
    start = start_from(model, "inf", recommended, scope=model_id, why=why)
    # scale and tuned are None while no image is on screen
    scale, tuned = workspace(source, key="inf", start=start, linked=(batch_sentence_key("inf"),))
    st.divider()
    batch_controls(source, None if model is None else model["id"], "inf", start, scale, tuned)
    batch_jobs("inf")


run_page(main, "showing the inference page")
