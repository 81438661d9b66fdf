"""The Train page's data-set chooser: a registered data set (with deletion), a folder, a zip to unpack or a
synthetic set to generate, further sets to train on together, and each set's summary."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from engine.errors import UserError
from ui.overlays import overlay_bytes
from ui.runtime import logger
from storage import paths
from storage.archives import unpack_dataset_zip

SOURCES = ["Registered data set", "Folder path", "Upload a zip", "Generate a synthetic data set"]


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
        except UserError:  # a data set that does not load is skipped
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
    except UserError as exc:
        return str(exc)
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


def choose_dataset() -> str | None:
    """The first data set of the run, as the user chose its source (None: none chosen yet)."""
    s = st.session_state
    if s.get("train_generated"):  # generated in the last run, below the radio: select it before drawing it
        _use_registered(s.pop("train_generated"))
    # A new data home has no data set: open on the synthetic generator, the one choice that needs no data.
    source = st.radio("Data set", SOURCES, key="train_source", horizontal=True,
                      index=0 if registered_datasets() else SOURCES.index("Generate a synthetic data set"))
    if source == "Registered data set":
        names = registered_datasets()
        if not names:
            st.info("No data set in the data home yet: upload a zip, give a folder or generate a synthetic one.")
            return None
        if s.get("train_registered") not in names:  # deleted meanwhile, or a first visit
            s.pop("train_registered", None)
        picked = st.selectbox("Registered data sets", names, key="train_registered",
                              index=0 if "train_registered" in s else first_usable(names),
                              help="Newest first; the newest one that can be read is chosen when the page opens.")
        dataset_delete_controls(picked)
        return str(paths.datasets_dir() / picked)
    if source == "Folder path":
        folder = st.text_input("Folder (DRIVE, STARE, CHASE_DB1 or HRF as downloaded, or images/ + masks/ [+ fov/])",
                               key="train_folder", placeholder="../shared/data/drive/training")
        return folder.strip() or None
    if source == "Upload a zip":
        up = st.file_uploader("Zip of a DRIVE, STARE, CHASE_DB1 or HRF download, or of images/ and masks/ "
                              "(optionally fov/)", type=["zip"], key="train_zip")
        st.button("Unpack into the data home", key="train_unpack", disabled=up is None, on_click=_unpack)
        if s.get("train_unpack_error"):
            st.error(s["train_unpack_error"])
        return None
    a, b, c = st.columns(3)
    a.number_input("Images", 2, 200, 8, key="train_synth_n")
    b.number_input("Size (px)", 32, 1024, 256, step=32, key="train_synth_size")  # fits the default 128 px patches
    c.number_input("Seed", 0, 10_000, 0, key="train_synth_seed")
    if st.button("Generate the synthetic data set", key="train_synth_go"):
        # in the script body, not a callback: the spinner is drawn under the button while it works
        with st.spinner("Generating the synthetic data set…", show_time=True):
            folder = generate_synthetic(int(s["train_synth_n"]), int(s["train_synth_size"]), int(s["train_synth_seed"]))
        s["train_generated"] = Path(folder).name
        st.rerun()
    st.caption("Synthetic fundus-like images with known vessels, to try the whole product without data. "
               "The default form is sized for real data and runs for tens of minutes on a CPU; for a first "
               "try set Epochs 5 and Steps per epoch 20 (a few minutes).")
    return None


def _use_registered(name: str) -> None:
    st.session_state["train_source"], st.session_state["train_registered"] = SOURCES[0], name


def _unpack() -> None:
    from engine.training.data import load_dataset

    up = st.session_state.get("train_zip")
    st.session_state["train_unpack_error"] = None
    try:  # load_dataset judges the unpacked folder: a zip without a data set leaves nothing behind
        _use_registered(unpack_dataset_zip(up.getvalue(), up.name, check=load_dataset).name)
    except UserError as exc:
        st.session_state["train_unpack_error"] = str(exc)


def show_summary(path: str) -> bool:
    """The data set's summary and first image with its vessel mask; False (and the reason) when it does not load."""
    try:
        summary, sample = dataset_summary(path)
    except UserError as exc:
        st.error(str(exc))
        return False
    a, b = st.columns([2, 1])
    with a:
        st.metric("Image / mask pairs", summary["n_images"])
        annotation = summary["annotation"].replace("*", r"\*").replace("_", r"\_")  # CHASE_DB1's *_1stHO
        estimated = " (the others' is estimated)" if summary["with_fov"] < summary["n_images"] else ""
        st.write(f"Layout: **{summary['layout']}** · vessels from {annotation} · sizes: {', '.join(summary['sizes'])}"
                 f" · with FOV mask: {summary['with_fov']}{estimated} · folder: `{summary['path']}`")
        st.caption(summary["scale"])
        for note in summary["notes"]:
            st.caption(note)
    b.image(sample, caption=f"{summary['ids'][0]} with its vessel mask (green)", width="stretch")
    return True


def choose_datasets() -> tuple[str | list[str] | None, bool]:
    """(the run's data set, or its list of data sets; whether all of them can train), each set's summary shown."""
    first = choose_dataset()
    if not first:
        return None, False
    usable = show_summary(first)
    folders = [first, *more_datasets(first)]
    for folder in folders[1:]:
        usable = show_summary(folder) and usable
    if usable and len(folders) > 1 and (problem := datasets_problem(folders)):
        st.error(problem)
        usable = False
    return (folders if len(folders) > 1 else first), usable
