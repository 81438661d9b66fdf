"""Inference (global): the pretrained model shipped with the program, any completed model's checkpoints
(grouped by model), or the classical vesselness filter; the same tuner; batch jobs over a folder or a
zip run by the worker."""
import json

import streamlit as st

from engine.inference.predictor import CLASSICAL, SHIPPED, Predictor
from engine.pretrained import pretrained_available
from ui.formatting import val_dice_words
from ui.maps import predictor_of
from ui.readers import all_checkpoints, list_models
from ui.runtime import run_page
from ui.inference_workspace import (
    batch_controls, batch_jobs, batch_sentence_key, checkpoint_label, monitor_of, start_from, workspace,
)

ABOUT = {CLASSICAL: "The classical vesselness filter: the baseline trained models must beat.",
         SHIPPED: "A U-Net trained on the 20 DRIVE training images, with augmentation that imitates other cameras. "
                  "For research use, like the DRIVE images themselves; not for diagnosis."}


def main() -> None:
    st.title("Inference")
    ckpts = all_checkpoints()  # completed models only
    groups: dict[str, list[dict]] = {}
    for c in ckpts:
        groups.setdefault(c["model_id"], []).append(c)
    names = {mid: f"{cs[0]['model_name']} ({val_dice_words(cs[0].get('best_val_dice'))})" for mid, cs in groups.items()}
    names |= {source: Predictor(source).name for source in ABOUT}
    # The pretrained model first: without a model of one's own, an upload gives a mask at once.
    options = ([SHIPPED] if pretrained_available() else []) + [CLASSICAL, *groups]
    a, b = st.columns(2)
    model_id = a.selectbox("Model", options, format_func=names.get, key="inf_model",
                           help="The pretrained model, your completed models, and the classical filter that needs "
                                "no training.")
    if model_id in ABOUT:  # the shipped model or the classical filter: its own settings, if any
        source, model = model_id, None
        b.caption(ABOUT[model_id])
        recommended = predictor_of(source).recommended_settings()
    else:
        model = next((m for m in list_models("completed") if m["id"] == model_id), None)
        by_label = {checkpoint_label(c, monitor_of(model)): c["path"] for c in groups[model_id]}
        source = by_label[b.selectbox("Checkpoint", list(by_label), key=f"inf_ckpt_{model_id}")]
        recommended = (model or {}).get("recommended_postprocess")
        recommended = json.loads(recommended) if recommended else None
    why = predictor_of(source).recommended_reasons() if recommended else None  # the calibration's sentences
    start = start_from(model, "inf", recommended, scope=model_id, why=why)
    # scale and tuned are None while no image is on screen
    scale, tuned = workspace(source, key="inf", start=start, linked=(batch_sentence_key("inf"),))
    st.divider()
    batch_controls(source, None if model is None else model["id"], "inf", start, scale, tuned)
    batch_jobs("inf")


run_page(main, "showing the inference page")
