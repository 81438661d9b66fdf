"""One table of bad inputs (issue 6): each row is an input, the entry point it goes through, and the
sentence the user must see.

Entry points: the dashboard (Streamlit AppTest: uploads, a typed checkpoint path, the Train page's zip
upload), a data set folder (``load_dataset``) or a training run on it (``train``), a zip import
(``storage.archives``), a training config (``TrainingConfig`` or the CLI's ``--set``), a checkpoint
(``engine.inference.predict.load_model`` or the dashboard), the storage API and the CLI (``python -m engine``).

The invariant checked for every row: only ``UserError`` sentences come out (no other exception, no
traceback text, no Streamlit exception element), nothing hangs (a per-test timeout), and the data home's
completed run — every database row and every checkpoint file — is exactly as before. Each row runs in
its own copy of a data home that holds one really trained, registered run.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tomllib
import zipfile
import zlib
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.errors import UserError
from engine.training.data import load_dataset
from engine.training.synthetic import make_synthetic_dataset, synthetic_sample
from engine.imageio import encode_png, read_image
from engine.inference.predict import load_model
from engine.training.config import TrainingConfig
from engine.training.loop import train
from storage import archives, paths
from storage import db as store

ROOT = Path(__file__).resolve().parents[1]
APP_TIMEOUT = 60  # seconds per AppTest script run on a busy 2-core machine
TINY = dict(base_channels=4, depth=2, batch_size=2, patch_size=32, steps_per_epoch=2, epochs=1, val_fraction=0.34,
            num_threads=1)

pytestmark = pytest.mark.timeout(120)
torch.set_num_threads(1)


# --------------------------------------------------------------------------- the data home with one run
@pytest.fixture(scope="module")
def template_home(tmp_path_factory) -> tuple[Path, str]:
    """A data home holding one completed run: really trained, its epochs and checkpoints registered."""
    home = tmp_path_factory.mktemp("template") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(paths.HOME_ENV, str(home))
        data = make_synthetic_dataset(paths.datasets_dir() / "synth", n_images=3, size=64, seed=1)
        config = TrainingConfig(**TINY)
        model_id = store.create_model("tiny", config.to_dict(), str(data))
        result = train(config, data, paths.checkpoints_dir(model_id))
        for e in result.history:
            store.log_epoch(model_id, e["epoch"], e["train_loss"], e["val_loss"], e["val_dice"], e["lr"], e["seconds"])
        store.add_checkpoint(model_id, result.best_epoch, result.best_checkpoint, "best", result.best_metric)
        store.add_checkpoint(model_id, result.epochs_run, result.last_checkpoint, "last", result.best_metric)
        store.update_model(model_id, status="completed", stop_reason=result.stop_reason, best_epoch=result.best_epoch,
                           best_metric=result.best_metric, best_val_dice=result.best_metric,
                           epochs_run=result.epochs_run, total_epochs=config.epochs, finished_at=store.utc_now(),
                           recommended_postprocess=result.recommended_postprocess)
    return home, model_id


@dataclasses.dataclass
class Ctx:
    home: Path
    tmp: Path
    model_id: str

    @property
    def dataset(self) -> Path:
        return self.home / "datasets" / "synth"

    @property
    def best(self) -> Path:
        return self.home / "models" / self.model_id / "checkpoints" / "best.pt"

    @property
    def marker(self) -> Path:
        return self.tmp / "code_ran"


@pytest.fixture
def ctx(template_home, tmp_path, monkeypatch) -> Ctx:
    """A private copy of the template home (paths in its database rewritten to the copy)."""
    template, model_id = template_home
    home = tmp_path / "home"
    shutil.copytree(template, home)
    con = sqlite3.connect(home / "ml_manager.db")
    with con:
        con.execute("UPDATE checkpoints SET path = replace(path, ?, ?)", (str(template), str(home)))
        con.execute("UPDATE models SET dataset = replace(dataset, ?, ?)", (str(template), str(home)))
    con.close()
    monkeypatch.setenv(paths.HOME_ENV, str(home))
    return Ctx(home, tmp_path, model_id)


def snapshot(home: Path) -> dict[str, Any]:
    """Every row of every table, and the hash of every file under models/."""
    con = sqlite3.connect(home / "ml_manager.db")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    rows = {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    con.close()
    files = {p.relative_to(home).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((home / "models").rglob("*")) if p.is_file()}
    return {"rows": rows, "files": files}


@contextmanager
def not_writable(path: Path):
    """Make ``path`` unwritable: chmod for a normal user; chattr +i for root (who ignores modes)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root where files cannot be made read-only (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --------------------------------------------------------------------------- inputs
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_IMAGE, _MASK, _FOV = synthetic_sample(96, np.random.default_rng(0))
FUNDUS = encode_png(_IMAGE)
PHOTO = Image.fromarray(_IMAGE)


def huge_header_png() -> bytes:
    """A real PNG header claiming 30000×30000 pixels with a tiny body: decoding it would fail differently."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [PHOTO.convert("P"), PHOTO.rotate(90).convert("P")]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def tiff16() -> bytes:
    return _encode(Image.fromarray((_IMAGE[:, :, 1].astype(np.uint16) * 257)), "TIFF")


def graded_mask() -> bytes:
    return encode_png((_MASK * 120 + np.indices(_MASK.shape)[1] % 7).astype(np.uint8))


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return buf.getvalue()


def dataset_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_folder(ctx: Ctx, files: dict[str, bytes]) -> Path:
    root = ctx.tmp / "set"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def synth_files(ctx: Ctx, n: int = 3) -> dict[str, bytes]:
    src = make_synthetic_dataset(ctx.tmp / "synth_src", n_images=n, size=64, seed=3)
    return dataset_files(src)


def pair(name: str, image: bytes = FUNDUS, mask: bytes | None = None) -> dict[str, bytes]:
    return {f"images/{name}": image, f"masks/{name}": mask if mask is not None else encode_png(_MASK)}


class Malicious:
    """Unpickling this the old way (weights_only=False) creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(ctx: Ctx, where: Path | None = None) -> Path:
    path = where or ctx.tmp / "evil.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(ctx.best, weights_only=True)
    buf = io.BytesIO()
    torch.save({**ckpt, "metrics": Malicious(ctx.marker)}, buf)
    path.write_bytes(buf.getvalue())
    return path


def variant_checkpoint(ctx: Ctx, **changes) -> Path:
    ckpt = torch.load(ctx.best, weights_only=True)
    path = ctx.tmp / "variant.pt"
    torch.save({**ckpt, **changes}, path)
    return path


def truncated_checkpoint(ctx: Ctx) -> Path:
    path = ctx.tmp / "cut.pt"
    raw = ctx.best.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def escaping_path(ctx: Ctx) -> Path:
    """``<home>/models/../../evil.pt``: typed to look as if it were inside the data home."""
    evil_checkpoint(ctx)
    return ctx.home / "models" / ".." / ".." / "evil.pt"


def empty_images_folder(ctx: Ctx) -> Path:
    (ctx.tmp / "set" / "images").mkdir(parents=True)
    return make_folder(ctx, {"masks/a.png": FUNDUS})


def checkpoint_without(ctx: Ctx, key: str) -> Path:
    ckpt = torch.load(ctx.best, weights_only=True)
    del ckpt[key]
    path = ctx.tmp / "variant.pt"
    torch.save(ckpt, path)
    return path


def float_tiff(value: float, everywhere: bool = False) -> bytes:
    """A 64×64 float TIFF of a fundus-like grey image with NaN / inf pixels (or nothing else)."""
    arr = np.full((64, 64), value, np.float32) if everywhere else (_IMAGE[:64, :64, 1] / 255).astype(np.float32)
    arr[:8, :8] = value
    return _encode(Image.fromarray(arr), "TIFF")


def one_image_set(ctx: Ctx) -> Path:
    src = make_synthetic_dataset(ctx.tmp / "one_src", n_images=1, size=64, seed=3)
    return make_folder(ctx, dataset_files(src))


def non_utf8_set(ctx: Ctx) -> Path:
    """A good data set in a folder named b"caf\\xe9" (Latin-1), as a UTF-8 system decodes it: 'caf\\udce9'."""
    return make_synthetic_dataset(ctx.tmp / os.fsdecode(b"caf\xe9"), n_images=3, size=64, seed=3)


def submit(folder: Path) -> Callable[[], Any]:
    def call():
        from engine.jobs import submit_training

        return submit_training("refused", folder, TrainingConfig(**TINY))
    return call


def predict_on(image: np.ndarray, fov: np.ndarray | None = None) -> Callable[[Ctx], Callable[[], Any]]:
    def build(ctx: Ctx) -> Callable[[], Any]:
        from engine.inference.predict import predict

        return lambda: predict(load_model(ctx.best), image, fov=fov)
    return build


def predict_args(ctx: Ctx, image: bytes, name: str = "f.png", checkpoint: Path | None = None,
                 output: Path | None = None) -> list[str]:
    folder = make_folder(ctx, {name: image})
    return ["predict", "--checkpoint", str(checkpoint or ctx.best), "--input", str(folder / name),
            "--output", str(output or ctx.tmp / "out")]


def existing_file(ctx: Ctx) -> Path:
    (ctx.tmp / "results.png").write_bytes(b"an earlier result")
    return ctx.tmp / "results.png"


def unreadable_file(ctx: Ctx) -> Path:
    """A regular file whose reading fails (EIO), as an unreadable file does even for root."""
    folder = make_folder(ctx, {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "locked.png").symlink_to("/proc/self/mem")
    return folder / "locked.png"


def evil_model_in_home(ctx: Ctx) -> str:
    """A second (completed) model whose best.pt carries code: as if a run folder had been tampered with."""
    model_id = store.create_model("tampered", TrainingConfig(**TINY).to_dict(), str(ctx.dataset))
    evil_checkpoint(ctx, paths.checkpoints_dir(model_id) / "best.pt")
    store.update_model(model_id, status="completed")
    return model_id


# --------------------------------------------------------------------------- entry points
@dataclasses.dataclass
class Seen:
    errors: list[str]  # sentences shown as errors (st.error, a UserError, a CLI's stderr)
    notes: list[str] = dataclasses.field(default_factory=list)  # warnings / infos / stdout
    accepted: bool = False


def _sentence(call: Callable[[], Any]) -> Seen:
    """Run a Python entry point: a UserError is the sentence; any other exception fails the test."""
    try:
        call()
    except UserError as exc:
        return Seen([str(exc)])
    return Seen([], accepted=True)


def _app(at: AppTest) -> Seen:
    assert not at.exception, [e.value for e in at.exception]  # no traceback element
    errors = [str(e.value) for e in at.error]
    notes = [str(e.value) for kind in ("warning", "info", "success") for e in getattr(at, kind)]
    return Seen(errors, notes, accepted=not errors)


def dashboard_upload(files: dict[str, tuple[str, bytes]], ctx: Ctx) -> Seen:
    """The Post-processing page: upload into its image / ground truth / FOV fields."""
    at = AppTest.from_file(str(ROOT / "pages" / "postprocess.py"), default_timeout=APP_TIMEOUT).run()
    if "pp_fov" in files:  # its uploader appears once the image is in and "Upload a mask" is chosen
        at.file_uploader(key="pp_image").set_value((*files["pp_image"], "application/octet-stream")).run()
        at.radio(key="pp_fov_choice").set_value("upload").run()
    for key, (name, data) in files.items():
        at.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    seen = _app(at.run())
    seen.accepted = seen.accepted and len(at.image) >= 3  # overlay, photograph, probability map
    return seen


def dashboard_model_page(model_id: str, ctx: Ctx) -> Seen:
    """The Model inference page of ``model_id`` with a fundus photograph uploaded (loads its best.pt)."""
    at = AppTest.from_file(str(ROOT / "pages" / "model_inference.py"), default_timeout=APP_TIMEOUT)
    at.query_params["model"] = model_id
    at.run()
    at.file_uploader(key="mi_images").set_value(("fundus.png", FUNDUS, "image/png"))
    seen = _app(at.run())
    seen.accepted = seen.accepted and len(at.image) >= 3
    return seen


def dashboard_save_preset(model_id: str, ctx: Ctx) -> Seen:
    """The Model inference page: tune on an upload, then 'Save preset' (a database write)."""
    at = AppTest.from_file(str(ROOT / "pages" / "model_inference.py"), default_timeout=APP_TIMEOUT)
    at.query_params["model"] = model_id
    at.run()
    at.file_uploader(key="mi_images").set_value(("fundus.png", FUNDUS, "image/png")).run()
    at.text_input(key="mi_preset_name").set_value("thin vessels")
    at.button(key="mi_preset_save").click()
    return _app(at.run())


def _typed_checkpoint_page():  # an AppTest script: a text field whose path goes to the pages' shared loader
    import streamlit as st

    from ui.maps import probability_map
    from ui.runtime import run_page
    from ui.uploads import upload_image

    def main():
        path = st.text_input("Checkpoint file", key="typed_ckpt")
        image = upload_image("Fundus image", key="typed_image")
        if path and image is not None:
            probability_map(path, image)
            st.success("The checkpoint was loaded.")

    run_page(main, "loading a typed checkpoint")


def dashboard_typed_checkpoint(path: Path, ctx: Ctx) -> Seen:
    at = AppTest.from_function(_typed_checkpoint_page, default_timeout=APP_TIMEOUT).run()
    at.file_uploader(key="typed_image").set_value(("fundus.png", FUNDUS, "image/png"))
    at.text_input(key="typed_ckpt").set_value(str(path))
    return _app(at.run())


def dashboard_zip(data: bytes, ctx: Ctx) -> Seen:
    """The Train page: 'Upload a zip', then 'Unpack into the data home'."""
    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=APP_TIMEOUT).run()
    at.radio(key="train_source").set_value("Upload a zip").run()
    at.file_uploader(key="train_zip").set_value(("upload.zip", data, "application/zip")).run()
    at.button(key="train_unpack").click()
    return _app(at.run())


def dashboard_page(page: str, ctx: Ctx) -> Seen:
    return _app(AppTest.from_file(str(ROOT / "pages" / page), default_timeout=APP_TIMEOUT).run())


def dataset_folder(folder: Path, ctx: Ctx) -> Seen:
    """What the Train page does with a folder: find the pairs, then read each sample."""
    def call():
        ds = load_dataset(folder)
        for i in range(len(ds)):
            ds.raw(i)
    return _sentence(call)


def train_on(args: tuple[dict, Path], ctx: Ctx) -> Seen:
    """``engine.training.loop.train``: a refusal must come before training starts (no 'start' event, no file)."""
    overrides, folder = args
    events: list[dict] = []
    out = ctx.tmp / "train_out"
    seen = _sentence(lambda: train(TrainingConfig(**{**TINY, **overrides}), folder, out, on_event=events.append))
    if not seen.accepted:
        assert not any(e["type"] == "start" for e in events) and not list(out.glob("*.pt"))
    return seen


def zip_import(data: bytes, ctx: Ctx) -> Seen:
    """``storage.archives.unpack_dataset_zip``; an accepted data set must then load."""
    before = sorted(p.name for p in paths.datasets_dir().iterdir())
    seen = _sentence(lambda: load_dataset(archives.unpack_dataset_zip(data, "upload.zip")))
    if not seen.accepted:  # nothing half-written is left behind
        assert sorted(p.name for p in paths.datasets_dir().iterdir()) == before
    return seen


def config(kwargs: dict, ctx: Ctx) -> Seen:
    return _sentence(lambda: TrainingConfig(**kwargs))


def config_json(data: dict, ctx: Ctx) -> Seen:
    """A config read from JSON (a run's row, ``--config file.json``): ``TrainingConfig.from_dict``."""
    return _sentence(lambda: TrainingConfig.from_dict(data))


def checkpoint(path: Path, ctx: Ctx) -> Seen:
    return _sentence(lambda: load_model(path))


def api(call: Callable[[], Any], ctx: Ctx) -> Seen:
    return _sentence(call)


def cli(args: list[str], ctx: Ctx) -> Seen:
    """``python -m engine ARGS`` in this process (``engine.cli.main``): exit status, stderr and stdout."""
    from engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return Seen([err.getvalue()] if code else [], [out.getvalue()], accepted=code == 0)


def cli_process(args: list[str], ctx: Ctx) -> Seen:
    """``python -m engine ARGS`` in a fresh process, as a user types it."""
    env = {**os.environ, paths.HOME_ENV: str(ctx.home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=100)
    errors = [proc.stderr] if proc.returncode else []
    return Seen(errors, [proc.stdout], accepted=proc.returncode == 0)


# --------------------------------------------------------------------------- the table
@dataclasses.dataclass
class Row:
    id: str
    entry: Callable[[Any, Ctx], Seen]
    build: Callable[[Ctx], Any]  # the input; may prepare the data home (before the snapshot is taken)
    expect: str | None  # regex the user's sentence must match (for an accepted input: a note, or None)
    accepted: bool = False
    lock: str | None = None  # "home" or "db": made unwritable while the entry runs
    check: Callable[[Ctx, Seen], None] | None = None  # a further assertion


ACCEPTED = True


def one_line(ctx: Ctx, seen: Seen) -> None:
    assert len(seen.errors) == 1 and len(seen.errors[0].strip().splitlines()) == 1, seen.errors


def no_marker(ctx: Ctx, seen: Seen) -> None:
    assert not ctx.marker.exists(), "unpickling ran code"


def nothing_escaped(ctx: Ctx, seen: Seen) -> None:
    assert not list(ctx.tmp.rglob("escaped*")) and not Path("/tmp/escaped_abs.txt").exists()


def rgb_converted(data: bytes) -> Callable[[Ctx, Seen], None]:
    def check(ctx: Ctx, seen: Seen) -> None:
        arr = read_image(data)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.max() > 0
    return check


def upload(name: str, data: bytes) -> Callable[[Ctx], dict]:
    return lambda ctx: {"pp_image": (name, data)}


def with_image(key: str, name: str, data: bytes) -> Callable[[Ctx], dict]:
    return lambda ctx: {"pp_image": ("fundus.png", FUNDUS), key: (name, data)}


_RGBA = _encode(PHOTO.convert("RGBA"), "PNG")
_CMYK = _encode(PHOTO.convert("CMYK"), "JPEG")
_GRAY = _encode(PHOTO.convert("L"), "PNG")
_TIFF16 = tiff16()

ROWS: list[Row] = [
    # ---- images, uploaded on the dashboard
    Row("image-empty", dashboard_upload, upload("empty.png", b""), r"empty\.png is empty \(0 bytes\)"),
    Row("image-text-named-png", dashboard_upload, upload("notes.png", b"meeting at 10, bring the slides\n"),
        r"notes\.png is not an image this program can read: use PNG, JPEG"),
    Row("image-truncated-png", dashboard_upload, upload("cut.png", FUNDUS[: len(FUNDUS) // 2]),
        r"cut\.png is truncated or damaged"),
    Row("image-truncated-jpeg", dashboard_upload, upload("cut.jpg", _encode(PHOTO, "JPEG")[:1500]),
        r"cut\.jpg is truncated or damaged"),
    Row("image-1x1", dashboard_upload, upload("dot.png", _encode(Image.new("RGB", (1, 1)), "PNG")),
        r"dot\.png is 1×1 pixels; images must be at least 16×16"),
    Row("image-header-30000x30000", dashboard_upload, upload("huge.png", huge_header_png()),
        r"huge\.png is too large \(30000×30000 pixels\): the limit is 40 megapixels"),
    Row("image-animated-gif", dashboard_upload, upload("blink.gif", animated_gif()),
        r"blink\.gif is an animation with 2 frames: save the frame you want"),
    Row("image-16bit-tiff", dashboard_upload, upload("deep.tif", _TIFF16), None, ACCEPTED, check=rgb_converted(_TIFF16)),
    Row("image-rgba-png", dashboard_upload, upload("alpha.png", _RGBA), None, ACCEPTED, check=rgb_converted(_RGBA)),
    Row("image-cmyk-jpeg", dashboard_upload, upload("print.jpg", _CMYK), None, ACCEPTED, check=rgb_converted(_CMYK)),
    Row("image-grayscale", dashboard_upload, upload("gray.png", _GRAY), None, ACCEPTED, check=rgb_converted(_GRAY)),
    Row("image-empty-cli-predict", cli,
        lambda ctx: ["predict", "--checkpoint", str(ctx.best), "--input", str(make_folder(ctx, {"e.png": b""}) / "e.png"),
                     "--output", str(ctx.tmp / "out")], r"error: e\.png is empty"),
    # ---- masks
    Row("mask-graded-values", dashboard_upload, with_image("pp_truth", "graded.png", graded_mask()),
        r"graded\.png is not a binary mask \(\d+ distinct values\); it was binarised at half its maximum", ACCEPTED),
    Row("mask-other-size", dashboard_upload, with_image("pp_truth", "small.png", encode_png(_MASK[:64, :64])),
        r"mask is 64×64 pixels but the image is 96×96"),
    Row("mask-other-size-in-dataset", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "masks/a.png": encode_png(_MASK[:64, :64])}),
        r"Size mismatch: a\.png is 64×64 but a\.png is 96×96"),
    Row("fov-all-zero-upload", dashboard_upload,
        with_image("pp_fov", "fov.png", encode_png(np.zeros_like(_FOV))), r"fov\.png is all zero \(no field of view\)"),
    Row("fov-all-zero-training", train_on,
        lambda ctx: ({}, make_folder(ctx, {**synth_files(ctx), "fov/synth_002.png": encode_png(np.zeros((64, 64), np.uint8))})),
        r"field-of-view mask synth_002\.png .* is all zero"),
    # ---- data sets
    Row("dataset-empty-images-folder", dataset_folder, empty_images_folder, r"images holds no images .*the data set is empty"),
    Row("dataset-no-pairs", dataset_folder, lambda ctx: make_folder(ctx, {"images/a.png": FUNDUS, "masks/b.png": FUNDUS}),
        r"Unpaired files: no vessel mask in masks/ for a\.png; no image in images/ for b\.png"),
    Row("dataset-duplicate-ids", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "images/a.tif": _encode(PHOTO, "TIFF")}),
        r"a\.png and a\.tif in .* have the same identifier 'a'"),
    Row("dataset-images-without-masks", dataset_folder,
        lambda ctx: make_folder(ctx, {**pair("a.png"), "images/b.png": FUNDUS, "images/c.png": FUNDUS}),
        r"no vessel mask in masks/ for b\.png, c\.png"),
    Row("dataset-nested-one-level", dataset_folder,
        lambda ctx: make_folder(ctx, {f"my_set/{k}": v for k, v in synth_files(ctx).items()}), None, ACCEPTED),
    Row("dataset-images-in-subfolders", dataset_folder,
        lambda ctx: make_folder(ctx, {"images/left/a.png": FUNDUS, "masks/a.png": FUNDUS}),
        r"holds no images directly, only the folder\(s\) left/"),
    Row("dataset-missing-folder", dataset_folder, lambda ctx: ctx.tmp / "nowhere", r"does not exist: check the path"),
    Row("dataset-missing-cli", cli, lambda ctx: ["train", "--data", str(ctx.tmp / "nowhere"), "--out", str(ctx.tmp / "o")],
        r"error: The data folder .*nowhere does not exist"),
    # ---- zip imports
    Row("zip-dotdot-paths", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "../../../escaped.txt": b"x"}),
        r"leaves its folder", check=nothing_escaped),
    Row("zip-absolute-paths", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "/tmp/escaped_abs.txt": b"x"}),
        r"absolute path", check=nothing_escaped),
    Row("zip-bomb", zip_import, lambda ctx: zip_bytes({**pair("a.png"), "masks/b.png": b"\0" * 50_000_000}),
        r"zip bomb; it was refused"),
    Row("zip-not-a-zip", zip_import, lambda ctx: b"PK\x03\x04 but not really", r"not a zip archive"),
    Row("zip-nested-folders", zip_import,
        lambda ctx: zip_bytes({f"export/drive/{k}": v for k, v in synth_files(ctx).items()}), None, ACCEPTED),
    Row("zip-dotdot-dashboard", dashboard_zip, lambda ctx: zip_bytes({**pair("a.png"), "../../../escaped.txt": b"x"}),
        r"leaves its folder", check=nothing_escaped),
    # ---- configs (every numeric option is generated below)
    Row("config-unknown-loss", config, lambda ctx: {"loss_function": "magic"},
        r"loss_function 'magic' is not known: choose one of .*dice"),
    Row("config-unknown-scheduler", config, lambda ctx: {"lr_schedule": "warp"},
        r"lr_schedule 'warp' is not known: choose one of cosine, plateau, none"),
    Row("config-unknown-option", config_json, lambda ctx: {"learning_rat": 0.1},
        r"Unknown training option\(s\) 'learning_rat': known options are"),
    Row("config-patch-larger-than-images", train_on, lambda ctx: ({"patch_size": 128}, ctx.dataset),
        r"patch_size 128 is larger than the smallest image \((synth_\d+\.png, )?64×64 pixels\): set patch_size to 64"),
    Row("config-nan-cli", cli, lambda ctx: ["train", "--data", str(ctx.dataset), "--out", str(ctx.tmp / "o"),
                                            "--set", "learning_rate=nan"], r"error: learning_rate must be a finite number"),
    Row("config-unknown-loss-cli", cli, lambda ctx: ["train", "--data", str(ctx.dataset), "--out", str(ctx.tmp / "o"),
                                                     "--set", "loss_function=magic"], r"error: loss_function 'magic' is not known"),
    # ---- checkpoints
    Row("checkpoint-pickle-runs-code", checkpoint, evil_checkpoint, r"contains objects other than weights .* not loaded",
        check=no_marker),
    Row("checkpoint-pickle-dashboard", dashboard_model_page, evil_model_in_home,
        r"best\.pt contains objects other than weights", check=no_marker),
    Row("checkpoint-pickle-cli", cli_process, lambda ctx: ["predict", "--checkpoint", str(evil_checkpoint(ctx)), "--input",
                                                  str(make_folder(ctx, {"f.png": FUNDUS}) / "f.png"), "--output",
                                                  str(ctx.tmp / "out")], r"error: evil\.pt contains objects", check=no_marker),
    Row("checkpoint-truncated", checkpoint, truncated_checkpoint, r"cut\.pt is not a readable checkpoint \(truncated"),
    Row("checkpoint-other-architecture", checkpoint, lambda ctx: variant_checkpoint(ctx, arch="resnet50"),
        r"holds a 'resnet50' model; this program reads 'unet' models only"),
    Row("checkpoint-newer-format", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version=99),
        r"checkpoint format 99, newer than this program's \(1\): update the program"),
    Row("checkpoint-outside-home-typed", dashboard_typed_checkpoint, lambda ctx: shutil.copy(ctx.best, ctx.tmp / "copy.pt"),
        r"copy\.pt is outside the data home's models folder"),
    Row("checkpoint-escape-home-typed", dashboard_typed_checkpoint, escaping_path,
        r"is outside the data home's models folder", check=no_marker),
    Row("checkpoint-inside-home-typed", dashboard_typed_checkpoint, lambda ctx: ctx.best, None, ACCEPTED),
    # ---- storage
    Row("home-not-writable-dashboard", dashboard_page, lambda ctx: "overview.py", r"cannot be written", lock="home"),
    Row("home-not-writable-cli", cli_process, lambda ctx: ["status"], r"error: The (data home|database) .* cannot be written",
        lock="home"),
    Row("db-read-only-api", api, lambda ctx: lambda: store.create_model("new", {}, "x"),
        r"The database .*ml_manager\.db cannot be written .*Nothing was changed", lock="db"),
    Row("db-read-only-dashboard-preset", dashboard_save_preset, lambda ctx: ctx.model_id,
        r"The database .*ml_manager\.db cannot be written", lock="db"),
    Row("db-read-only-cli-submit", cli_process, lambda ctx: ["submit", "--data", str(ctx.dataset), "--set", "epochs=1",
                                               "--set", "patch_size=32"],
        r"error: The database .* cannot be written", lock="db"),
]

# Inputs an outside run found escaping as tracebacks, and their siblings.
_GZ_FUNDUS = gzip.compress(_encode(PHOTO, "PPM"))
ROWS += [
    # ---- float images with NaN / inf pixels: mapped (NaN black, +inf white) unless no pixel is finite
    Row("image-float-some-nan", api, lambda ctx: lambda: read_image(float_tiff(math.nan)), None, ACCEPTED),
    Row("image-float-some-inf", api, lambda ctx: lambda: read_image(float_tiff(math.inf)), None, ACCEPTED),
    Row("image-float-all-nan", api, lambda ctx: lambda: read_image(float_tiff(math.nan, True), name="void.tif"),
        r"^void\.tif holds no usable pixel values \(every pixel is NaN or infinite\)"),
    Row("image-float-all-inf", api, lambda ctx: lambda: read_image(float_tiff(math.inf, True), name="void.tif"),
        r"^void\.tif holds no usable pixel values"),
    Row("image-float-inf-cli-predict", cli_process, lambda ctx: predict_args(ctx, float_tiff(math.inf), "f.tif"),
        None, ACCEPTED),
    Row("image-float-all-nan-cli-predict", cli_process,
        lambda ctx: predict_args(ctx, float_tiff(math.nan, True), "f.tif"),
        r"^error: f\.tif holds no usable pixel values", check=one_line),
    # ---- files that are not readable images
    Row("image-is-a-folder", api, lambda ctx: lambda: read_image(make_folder(ctx, {"a.png/x": b"x"}) / "a.png"),
        r"^a\.png is a folder, not an image file"),
    Row("image-unreadable", api, lambda ctx: lambda: read_image(unreadable_file(ctx)), r"^locked\.png cannot be read"),
    Row("image-unreadable-cli-predict", cli,
        lambda ctx: predict_args(ctx, FUNDUS)[:4] + [str(unreadable_file(ctx)), "--output", str(ctx.tmp / "out")],
        r"^error: locked\.png cannot be read", check=one_line),
    Row("image-gzip-cli-predict", cli, lambda ctx: predict_args(ctx, _GZ_FUNDUS, "im0001.ppm.gz"), None, ACCEPTED),
    Row("image-gzip-damaged", api, lambda ctx: lambda: read_image(_GZ_FUNDUS[:40], name="im0001.ppm.gz"),
        r"^im0001\.ppm\.gz is a damaged gzip file"),
    # ---- checkpoints whose fields have the wrong type (as an edited file has)
    Row("checkpoint-metrics-list", checkpoint, lambda ctx: variant_checkpoint(ctx, metrics=[0.8]),
        r"variant\.pt: its metrics is a list, not a table"),
    Row("checkpoint-metrics-text", checkpoint, lambda ctx: variant_checkpoint(ctx, metrics="dice 0.8"),
        r"its metrics is a str, not a table"),
    Row("checkpoint-metrics-list-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, checkpoint=variant_checkpoint(ctx, metrics=[0.8])),
        r"^error: variant\.pt: its metrics is a list", check=one_line),
    Row("checkpoint-recommended-text", checkpoint, lambda ctx: variant_checkpoint(ctx, recommended_postprocess="best"),
        r"its recommended_postprocess is a str, not a table"),
    Row("checkpoint-epoch-word", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch="seven"),
        r"its epoch is 'seven', not a whole number"),
    Row("checkpoint-epoch-none", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=None),
        r"its epoch is None, not a whole number"),
    Row("checkpoint-epoch-negative", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=-3),
        r"its epoch is -3, not a whole number of at least 0"),
    Row("checkpoint-epoch-fraction", checkpoint, lambda ctx: variant_checkpoint(ctx, epoch=2.5),
        r"its epoch is 2\.5"),
    Row("checkpoint-epoch-word-cli", cli, lambda ctx: predict_args(ctx, FUNDUS, checkpoint=variant_checkpoint(
        ctx, epoch="seven")), r"^error: variant\.pt: its epoch is 'seven'", check=one_line),
    Row("checkpoint-weights-list", checkpoint, lambda ctx: variant_checkpoint(ctx, state_dict=[1, 2]),
        r"its weights \(state_dict\) are not a table of tensors"),
    Row("checkpoint-weights-not-tensors", checkpoint,
        lambda ctx: variant_checkpoint(ctx, state_dict={"inc.0.weight": "heavy"}), r"are not a table of tensors"),
    Row("checkpoint-config-unknown-keys", checkpoint,
        lambda ctx: variant_checkpoint(ctx, config={**TrainingConfig(**TINY).to_dict(), "warp_speed": 9}),
        r"has settings this program does not accept \(.*warp_speed"),
    Row("checkpoint-config-list", checkpoint, lambda ctx: variant_checkpoint(ctx, config=["unet"]),
        r"its settings \(config\) are not a table of options"),
    Row("checkpoint-format-missing", checkpoint, lambda ctx: checkpoint_without(ctx, "format_version"),
        r"variant\.pt is not a checkpoint of this program \(it records no checkpoint format\)"),
    Row("checkpoint-format-missing-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, checkpoint=checkpoint_without(ctx, "format_version")),
        r"^error: variant\.pt is not a checkpoint of this program", check=one_line),
    Row("checkpoint-format-text", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version="1"),
        r"has an unknown checkpoint format \('1'\)"),
    Row("checkpoint-format-zero", checkpoint, lambda ctx: variant_checkpoint(ctx, format_version=0),
        r"has an unknown checkpoint format \(0\)"),
    # ---- predict: images and field-of-view masks of the wrong size
    Row("predict-empty-image", api, predict_on(np.zeros((0, 0, 3), np.uint8)), r"0×0 pixels"),
    Row("predict-fov-other-size", api, predict_on(_IMAGE, np.ones((64, 64), np.uint8)),
        r"64×64 pixels but the image is 96×96"),
    Row("predict-output-is-a-file", cli, lambda ctx: predict_args(ctx, FUNDUS, output=existing_file(ctx)),
        r"^error: --output must be a folder, but .*results\.png is a file", check=one_line),
    Row("predict-output-inside-a-file-cli", cli_process,
        lambda ctx: predict_args(ctx, FUNDUS, output=existing_file(ctx) / "masks"),
        r"^error: --output must be a folder, but .*results\.png is a file", check=one_line),
    # ---- queuing a training that train() would refuse
    Row("submit-one-image", api, lambda ctx: submit(one_image_set(ctx)),
        r"has 1 image\(s\); training needs at least 2"),
    Row("submit-one-image-cli", cli_process, lambda ctx: ["submit", "--data", str(one_image_set(ctx))],
        r"^error: .* has 1 image\(s\); training needs at least 2", check=one_line),
    Row("submit-non-utf8-folder", api, lambda ctx: submit(non_utf8_set(ctx)),
        r"The data folder's path .*caf\\xe9 is not valid UTF-8 text"),
    Row("submit-non-utf8-folder-cli", cli_process, lambda ctx: ["submit", "--data", str(non_utf8_set(ctx))],
        r"^error: The data folder's path .*caf\\xe9 is not valid UTF-8 text", check=one_line),
]

# Every numeric TrainingConfig option, each with NaN, a negative, zero and an absurd value.
ZERO_MEANS_SOMETHING = {  # zero is a real setting here ("off", "none", "no weight"), so it is accepted
    "dropout_rate", "dice_weight", "focal_alpha", "focal_gamma", "tversky_alpha", "tversky_beta", "weight_decay",
    "min_learning_rate", "plateau_patience", "early_stopping_patience", "min_delta", "max_minutes", "seed",
    "num_threads", "checkpoint_every", "ema_decay", "val_fraction", "camera_augment",
}
NUMERIC = [f for f in dataclasses.fields(TrainingConfig) if f.type in ("int", "float")]
for f in NUMERIC:
    whole = f.type == "int"
    for label, value in (("nan", math.nan), ("negative", -1 if whole else -1.0), ("zero", 0 if whole else 0.0),
                         ("absurd", 10**12 if whole else 1e12)):
        ok = label == "zero" and f.name in ZERO_MEANS_SOMETHING
        ROWS.append(Row(f"config-{f.name}-{label}", config, lambda ctx, n=f.name, v=value: {n: v},
                        None if ok else rf"^{f.name} must be ", ok))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_a_sentence_and_changes_nothing(row: Row, ctx: Ctx):
    given = row.build(ctx)
    before = snapshot(ctx.home)
    target = {"home": ctx.home, "db": ctx.home / "ml_manager.db", None: None}[row.lock]
    if target is None:
        seen = row.entry(given, ctx)
    else:
        with not_writable(target):
            seen = row.entry(given, ctx)
    shown = "\n".join(seen.errors + seen.notes)
    assert "Traceback" not in shown and 'File "' not in shown, shown
    if row.accepted:
        assert seen.accepted and not seen.errors, shown
        if row.expect:
            assert re.search(row.expect, "\n".join(seen.notes)), shown
    else:
        assert not seen.accepted and seen.errors, shown
        assert re.search(row.expect, "\n".join(seen.errors), re.S), shown
    if row.check:
        row.check(ctx, seen)
    assert snapshot(ctx.home) == before


def test_every_numeric_option_has_its_four_rows():
    ids = {r.id for r in ROWS}
    assert NUMERIC and all(f"config-{f.name}-{v}" in ids for f in NUMERIC for v in ("nan", "negative", "zero", "absurd"))
    assert ZERO_MEANS_SOMETHING <= {f.name for f in NUMERIC}


# --------------------------------------------------------------------------- security settings
def test_streamlit_keeps_xsrf_protection_and_binds_to_localhost():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["address"] == "127.0.0.1"


def test_checkpoints_load_with_weights_only_everywhere():
    """Every torch.load in the program passes weights_only=True."""
    calls = []
    for path in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("storage/*.py"), *ROOT.glob("pages/*.py"), ROOT / "app.py"]):
        for line in path.read_text().splitlines():
            if "torch.load(" in line and not line.lstrip().startswith("#"):
                calls.append((path.name, line.strip()))
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_uploaded_zips_are_stored_under_generated_names(ctx):
    """The batch-inference zip goes to uploads/<uuid>/<its own name, made safe>; the data set zip to
    datasets/<safe name>-<hash>/."""
    at = AppTest.from_file(str(ROOT / "pages" / "inference.py"), default_timeout=APP_TIMEOUT).run()
    at.radio(key="inf_batch_kind").set_value("Zip upload").run()
    at.file_uploader(key="inf_batch_zip").set_value(("../../evil name;rm.zip", zip_bytes({"a.png": FUNDUS}),
                                                     "application/zip")).run()
    at.button(key="inf_batch_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    stored = [p.relative_to(ctx.home / "uploads").parts for p in (ctx.home / "uploads").rglob("*") if p.is_file()]
    assert len(stored) == 1 and re.fullmatch(r"[0-9a-f]{32}", stored[0][0]) and stored[0][1] == "evil name_rm.zip", stored
    folder = archives.unpack_dataset_zip(zip_bytes({f"d/{k}": v for k, v in pair("a.png").items()}), "../../x y;.zip")
    assert folder.parent == ctx.home / "datasets" and re.fullmatch(r"x_y-[0-9a-f]{8}", folder.name), folder


# --------------------------------------------------------------------------- batch inference
def test_one_unreadable_file_fails_only_its_own_row_of_a_batch(ctx):
    from engine.inference.batch import run_job

    folder = unreadable_file(ctx).parent
    (folder / "good.png").write_bytes(FUNDUS)
    (folder / "blocked.png").write_bytes(FUNDUS)
    job_id = store.create_inference_job(store.BASELINE, str(folder), {})
    (paths.inference_dir(job_id) / "prob" / "blocked.png").mkdir(parents=True)  # its result cannot be written
    run_job(job_id)
    job = store.get_inference_job(job_id)
    stats = (paths.inference_dir(job_id) / "stats.csv").read_text()
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(stats))}
    assert (job["status"], job["n_done"], job["n_failed"]) == ("completed", 3, 2)
    assert rows["locked.png"]["error"].startswith("locked.png cannot be read")
    assert rows["blocked.png"]["error"].startswith("blocked.png could not be read or its results written")
    assert rows["good.png"]["error"] == ""
