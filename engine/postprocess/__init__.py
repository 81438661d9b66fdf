"""Post-processing of a vessel probability map into a clean binary mask, and its calibration.

``config`` holds ``PostProcessConfig``; ``pipeline`` holds ``enhanced_post_processing`` (threshold,
morphology, component filters, hole filling); ``connectivity`` its connected-component primitives;
``calibration`` the search for the settings that score best on validation images. No torch, no Streamlit.
"""
from engine.postprocess.calibration import calibrate_postprocess, pooled_dice
from engine.postprocess.config import KERNEL_SHAPES, THRESHOLD_MODES, PostProcessConfig
from engine.postprocess.pipeline import PostProcessResult, enhanced_post_processing, warnings_for

__all__ = ["KERNEL_SHAPES", "THRESHOLD_MODES", "PostProcessConfig", "PostProcessResult", "calibrate_postprocess",
           "enhanced_post_processing", "pooled_dice", "warnings_for"]
