"""The bad-input table (issue 6), shared by tests/test_bad_input_{engine,cli,api,pages}.py: each row is an
input, the entry point it goes through, and the sentence the user must see.

Entry points: the dashboard (Streamlit AppTest: uploads, a typed checkpoint path, the Train page's zip
upload), a data set folder (``load_dataset``) or a training run on it (``train``), a zip import
(``storage.archives``), a training config (``TrainingConfig`` or the CLI's ``--set``), a checkpoint
(``engine.inference.predict.load_model`` or the dashboard), the storage API and the CLI (``python -m engine``).

The invariant checked for every row: only ``UserError`` sentences come out (no other exception, no
traceback text, no Streamlit exception element), nothing hangs (a per-test timeout), and the data home's
completed run — every database row and every checkpoint file — is exactly as before. Each row runs in
its own copy of a data home that holds one really trained, registered run.

The data home with one run is trained once per session (``bad_input_template`` in tests/conftest.py);
this module holds its builder, the per-row copy (``ctx``), the inputs that more than one face uses, the
entry points and ``check_row``, the invariant every row is held to.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
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
from engine.imageio import encode_png
from engine.inference.predict import load_model
from engine.training.config import TrainingConfig
from engine.training.loop import train
from storage import archives, paths
from storage import db as store

ROOT = Path(__file__).resolve().parents[1]
APP_TIMEOUT = 60  # seconds per AppTest script run on a busy 2-core machine
TINY = dict(base_channels=4, depth=2, batch_size=2, patch_size=32, steps_per_epoch=2, epochs=1, val_fraction=0.34,
            num_threads=1)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the data home with one run
def make_template_home(home: Path) -> tuple[Path, str]:
    """A data home holding one completed run: really trained, its epochs and checkpoints registered."""
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


def copy_template(template: tuple[Path, str], tmp: Path) -> Ctx:
    """A private copy of the template home under ``tmp`` (paths in its database rewritten to the copy)."""
    source, model_id = template
    home = tmp / "home"
    shutil.copytree(source, home)
    con = sqlite3.connect(home / "ml_manager.db")
    with con:
        con.execute("UPDATE checkpoints SET path = replace(path, ?, ?)", (str(source), str(home)))
        con.execute("UPDATE models SET dataset = replace(dataset, ?, ?)", (str(source), str(home)))
    con.close()
    return Ctx(home, tmp, model_id)


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
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


IMAGE, MASK, FOV = synthetic_sample(96, np.random.default_rng(0))
FUNDUS = encode_png(IMAGE)
PHOTO = Image.fromarray(IMAGE)
GZ_FUNDUS = gzip.compress(encode(PHOTO, "PPM"))


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


def pair(name: str, image: bytes = FUNDUS, mask: bytes | None = None) -> dict[str, bytes]:
    return {f"images/{name}": image, f"masks/{name}": mask if mask is not None else encode_png(MASK)}


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


def checkpoint_without(ctx: Ctx, key: str) -> Path:
    ckpt = torch.load(ctx.best, weights_only=True)
    del ckpt[key]
    path = ctx.tmp / "variant.pt"
    torch.save(ckpt, path)
    return path


def float_tiff(value: float, everywhere: bool = False) -> bytes:
    """A 64×64 float TIFF of a fundus-like grey image with NaN / inf pixels (or nothing else)."""
    arr = np.full((64, 64), value, np.float32) if everywhere else (IMAGE[:64, :64, 1] / 255).astype(np.float32)
    arr[:8, :8] = value
    return encode(Image.fromarray(arr), "TIFF")


def one_image_set(ctx: Ctx) -> Path:
    src = make_synthetic_dataset(ctx.tmp / "one_src", n_images=1, size=64, seed=3)
    return make_folder(ctx, dataset_files(src))


def non_utf8_set(ctx: Ctx) -> Path:
    """A good data set in a folder named b"caf\\xe9" (Latin-1), as a UTF-8 system decodes it: 'caf\\udce9'."""
    return make_synthetic_dataset(ctx.tmp / os.fsdecode(b"caf\xe9"), n_images=3, size=64, seed=3)


def unreadable_file(ctx: Ctx) -> Path:
    """A regular file whose reading fails (EIO), as an unreadable file does even for root."""
    folder = make_folder(ctx, {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "locked.png").symlink_to("/proc/self/mem")
    return folder / "locked.png"

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


def no_marker(ctx: Ctx, seen: Seen) -> None:
    assert not ctx.marker.exists(), "unpickling ran code"


def nothing_escaped(ctx: Ctx, seen: Seen) -> None:
    assert not list(ctx.tmp.rglob("escaped*")) and not Path("/tmp/escaped_abs.txt").exists()


def check_row(row: Row, ctx: Ctx) -> None:
    """The invariant of every row: the sentence (or acceptance) it expects, no traceback text, its own
    further check, and the data home's rows and checkpoint files exactly as before."""
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
