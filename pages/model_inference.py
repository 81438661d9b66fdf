"""Model inference: one model's checkpoints (also while it trains), images in, the tuner opening
with the model's recommended settings, metrics against a ground truth, masks out, presets saved.
The pretrained model shipped with the program is offered too, after the user's own models."""
import streamlit as st

from engine.inference.predictor import SHIPPED
from engine.pretrained import PRETRAINED_ID, PRETRAINED_NAME, pretrained_available
from ui.maps import predictor_of
from ui.readers import list_models, model_checkpoints
from ui.runtime import run_page
from ui.inference_workspace import checkpoint_label, monitor_of, save_preset_controls, start_from, workspace
from storage.db import TRAINING_STATUSES


def pick_model(models: list[dict]) -> str | None:
    """The model named by ?model=<id>, or one chosen here (which then goes into the URL)."""
    ids = [m["id"] for m in models] + ([PRETRAINED_ID] if pretrained_available() else [])
    wanted = st.query_params.get("model")
    if wanted and wanted not in ids:
        st.error(f"There is no model with id {wanted!r}: it may have been deleted. Choose one below.")
    label = {m["id"]: f"{m['name']} ({m['status']}, {m['id']})" for m in models} | {
        PRETRAINED_ID: f"{PRETRAINED_NAME} (shipped with the program)"}
    if wanted in ids:
        index = ids.index(wanted)
    elif wanted:
        index = None
    else:  # opened from the sidebar: the newest completed model (models come newest first), else the newest
        index = next((i for i, m in enumerate(models) if m["status"] == "completed"), 0)
    pick = st.selectbox("Model", ids, index=index, format_func=label.get,
                        key=f"mi_model_{wanted}", placeholder="Choose a model")
    if pick and pick != wanted:
        st.query_params["model"] = pick
    return pick


def main() -> None:
    st.title("Model inference")
    models = list_models()
    if not models and not pretrained_available():
        st.info("No models yet: train one on the Train page. Meanwhile the Post-processing page works on any "
                "photograph.")
        return
    model_id = pick_model(models)
    if not model_id:
        return
    if model_id == PRETRAINED_ID:
        shipped_model(bool(models))
        return
    model = next(m for m in models if m["id"] == model_id)
    ckpts = model_checkpoints(model_id)
    if not ckpts:
        st.info(f"{model['name']} has no checkpoint yet ({model['status']}); the first one is written after "
                "its first epoch.")
        return
    if model["status"] in TRAINING_STATUSES:
        st.caption("This model is still training: best.pt is its best epoch so far and is reloaded when it changes.")
    by_label = {checkpoint_label(c, monitor_of(model)): c["path"] for c in ckpts}
    path = by_label[st.selectbox("Checkpoint", list(by_label), key="mi_ckpt")]
    _, tuned = workspace(path, key="mi", start=start_from(model, "mi"))
    with st.expander("Save these settings as a preset of this model"):
        save_preset_controls(model_id, "mi", tuned)


def shipped_model(own_models: bool) -> None:
    """The pretrained model shipped with the program, with its recommended settings."""
    st.caption("A U-Net trained with this program's default recipe on the 20 DRIVE training images; for research "
               "use, not for diagnosis." + ("" if own_models else " Models you train on the Train page are "
                                            "listed here too."))
    recommended = predictor_of(SHIPPED).recommended_settings()
    workspace(SHIPPED, key="mi", start=start_from(None, "mi", recommended, scope=PRETRAINED_ID))


run_page(main, "showing the model inference page")
