"""Training a vessel-segmentation U-Net.

``config`` (TrainingConfig), ``layouts`` (where a data set keeps its files), ``data`` (data sets),
``preprocess`` (channels, CLAHE, normalisation), ``sampling`` (the split and the patches), ``synthetic``
(generated data sets), ``models`` (the U-Net), ``losses``, ``callbacks`` (early stopping, LR schedule,
weight average), ``device``, ``checkpoint`` (the format, save and load), ``loop`` (``train``),
``planner`` (choosing patch, batch, precision and epochs for this machine), ``plan`` (its record and
explanation), ``measure`` (timing a step here). Import the module you need; this package imports
nothing at import time, so reading a config does not load torch's training code.
"""
