"""Post-processing: upload a fundus photograph (and optionally its ground truth), choose its field of
view (estimated, an uploaded mask, or the whole image) and tune every post-processing option on the
classical vesselness map, live."""
import streamlit as st

from engine.inference.predictor import CLASSICAL
from ui.maps import probability_map
from ui.runtime import run_page
from ui.tuner import postprocess_tuner
from ui.uploads import matching_mask, upload_image
from ui.inference_workspace import field_of_view
from storage import paths


def main() -> None:
    st.title("Post-processing")
    st.caption(
        "Upload a fundus photograph and tune how its vessel probability map becomes a mask. "
        "The map here comes from the classical vesselness filter (no model needed); the same "
        "tuner opens on the inference pages with a trained model's map."
    )
    a, b = st.columns(2)
    with a:
        image = upload_image("Fundus image", key="pp_image", help="PNG, JPEG, TIFF, GIF, PPM or BMP, up to 40 megapixels.")
    with b:
        truth_up = upload_image("Ground-truth mask (optional)", key="pp_truth", kind="mask",
                                help="Adds Dice, clDice, sensitivity and the other metrics.")
    if image is None:
        st.info("Upload a fundus photograph to start; DRIVE's images/*.tif work as they are. No photograph at hand? "
                "Generate a synthetic data set on the Train page and upload one of its images, from "
                f"`{paths.datasets_dir()}/synthetic_…/images/`.")
        return
    truth = matching_mask(image, truth_up, "ground-truth mask")
    fov = field_of_view(image, key="pp", upload_key="pp_fov")
    prob = probability_map(CLASSICAL, image, fov.mask)
    postprocess_tuner(prob, image.array, key="pp", fov=fov.mask, truth=truth, file_stem=image.stem, fov_scope=fov.scope)


run_page(main, "showing the post-processing page")
