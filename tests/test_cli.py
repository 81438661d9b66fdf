"""``python -m engine`` end to end in subprocesses on a synthetic data set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "base_channels=4", "--set", "depth=2", "--set", "epochs=2", "--set", "steps_per_epoch=4",
        "--set", "patch_size=32", "--set", "batch_size=4", "--set", "num_threads=1"]


def engine(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    done = engine("synthesize", "--out", base / "data", "--n", 4, "--size", 64, "--seed", 3)
    assert done.returncode == 0, done.stderr
    done = engine("train", "--data", base / "data", "--out", base / "run", *TINY)
    assert done.returncode == 0, done.stderr
    return base, done


@pytest.mark.slow
def test_train_prints_progress_and_the_best_checkpoint(trained):
    base, done = trained
    lines = done.stdout.splitlines()
    assert lines[-1] == f"best checkpoint: {base / 'run' / 'best.pt'}"
    assert sum(line.startswith("epoch ") for line in lines) == 2 and "val_dice" in done.stdout
    assert (base / "run" / "last.pt").is_file() and len(list((base / "data" / "images").iterdir())) == 4


@pytest.mark.slow
def test_predict_writes_probability_and_mask_pngs(trained, tmp_path):
    base, _ = trained
    done = engine("predict", "--checkpoint", base / "run" / "best.pt", "--input", base / "data" / "images",
                  "--output", tmp_path)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:2] == ["synth_001_mask.png", "synth_001_prob.png"] and len(names) == 8


@pytest.mark.parametrize("choice", [["--recommended"], ["--threshold", "0.4"], ["--tta"]])
def test_predict_options_in_process(trained, tmp_path, choice, capsys):
    base, _ = trained
    image = base / "data" / "images" / "synth_002.png"
    assert main(["predict", "--checkpoint", str(base / "run" / "best.pt"), "--input", str(image),
                 "--output", str(tmp_path), *choice]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth_002_mask.png", "synth_002_prob.png"]


@pytest.mark.slow
def test_evaluate_prints_pooled_and_per_image_metrics(trained, tmp_path, capsys):
    base, _ = trained
    settings = tmp_path / "pp.json"
    settings.write_text(json.dumps({"threshold": 0.5, "min_component_size": 5}))
    done = engine("evaluate", "--checkpoint", base / "run" / "best.pt", "--data", base / "data")
    assert done.returncode == 0, done.stderr
    outputs = [done.stdout]
    for extra in (["--postprocess", str(settings)], ["--recommended"]):
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(base / "run" / "best.pt"), "--data", str(base / "data"), *extra]) == 0
        outputs.append(capsys.readouterr().out)
    for out in outputs:
        result = json.loads(out)
        for key in ("dice", "iou", "precision", "sensitivity", "specificity", "accuracy", "roc_auc", "cldice"):
            assert key in result and all(key in row for row in result["per_image"])
        assert len(result["per_image"]) == 4 and 0 <= result["dice"] <= 1 and result["roc_auc"] is not None


@pytest.mark.slow
def test_resume_from_the_command_line(trained, tmp_path, capsys):
    base, _ = trained
    code = main(["train", "--data", str(base / "data"), "--out", str(tmp_path), "--resume", str(base / "run" / "last.pt"),
                 *TINY, "--set", "epochs=3"])
    assert code == 0 and "epochs 3-3" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["train", "--data", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
    (["train", "--data", "{data}", "--out", "{tmp}/o", "--set", "colour=red"], "Unknown training option 'colour'"),
    (["train", "--data", "{data}", "--out", "{tmp}/o", "--set", "epochs=zero"], "epochs must be a whole number"),
    (["train", "--data", "{data}", "--out", "{tmp}/o", "--set", "learning_rate=-1"], "learning_rate must be"),
    (["train", "--data", "{data}", "--out", "{tmp}/o", "--config", "{tmp}/nope.json"], "does not exist"),
    (["train", "--data", "{data}", "--out", "{tmp}/o", "--max-minutes", "-1"], "--max-minutes"),
    (["predict", "--checkpoint", "{tmp}/junk.pt", "--input", "{data}/images", "--output", "{tmp}/p"],
     "not a readable checkpoint"),
    (["predict", "--checkpoint", "{tmp}/none.pt", "--input", "{data}/images", "--output", "{tmp}/p"],
     "No checkpoint file"),
    (["evaluate", "--checkpoint", "{tmp}/junk.pt", "--data", "{data}"], "not a readable checkpoint"),
    (["evaluate", "--checkpoint", "{ckpt}", "--data", "{tmp}"], "holds no data set in a layout"),
    (["synthesize", "--out", "{tmp}/s", "--n", "0"], "n_images must be"),
    (["train", "--data", "{data}"], "--out"),
])
def test_errors_are_one_sentence_and_non_zero(trained, tmp_path, args, words, capsys):
    base, _ = trained
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    fill = {"tmp": tmp_path, "data": base / "data", "ckpt": base / "run" / "best.pt"}
    try:
        code = main([a.format(**fill) for a in args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["train", "--data", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
    (["predict", "--checkpoint", "{tmp}/junk.pt", "--input", "{tmp}", "--output", "{tmp}/p"], "not a readable"),
])
def test_errors_in_a_subprocess_have_no_traceback(tmp_path, args, words):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    done = engine(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_status_outside_a_data_home_says_so_and_creates_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ML_MANAGER_HOME"}
    done = subprocess.run([sys.executable, "-m", "engine", "status"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert (done.returncode, "There is no data home" in done.stderr, (tmp_path / "data").exists()) == (2, True, False)


# --- which mask predict writes, and what evaluate scores ------------------------------------------

RECOMMENDED = {"threshold": 0.35, "apply_opening": False, "apply_closing": True, "min_component_size": 20,
               "confidence_threshold": 0.0}


@pytest.fixture(scope="module")
def with_and_without_recommended(trained):
    """The trained best.pt twice: with distinctive recommended settings, and with none."""
    import torch

    base, _ = trained
    ckpt = torch.load(base / "run" / "best.pt", weights_only=True)
    paths = {}
    for name, rec in (("recommended", RECOMMENDED), ("none", None)):
        ckpt["recommended_postprocess"] = rec
        paths[name] = base / f"{name}.pt"
        torch.save(ckpt, paths[name])
    return base, paths


def expected_mask(checkpoint: Path, image_path: Path, settings) -> np.ndarray:
    from engine.fov import estimate_fov
    from engine.imageio import read_image
    from engine.inference.predict import load_model, predict
    from engine.postprocess import PostProcessConfig, enhanced_post_processing

    image = read_image(image_path)
    fov = estimate_fov(image)
    prob = predict(load_model(checkpoint), image, fov=fov)
    if isinstance(settings, float):
        return (prob >= settings).astype(np.uint8)
    return enhanced_post_processing(prob, config=PostProcessConfig(**settings), fov=fov).mask



@pytest.mark.parametrize("model, options, settings", [
    ("recommended", [], RECOMMENDED),  # the default: the model's recommended settings
    ("recommended", ["--recommended"], RECOMMENDED),
    ("none", [], {}),  # no recommended settings: the default post-processing
    ("recommended", ["--raw"], 0.5),
    ("recommended", ["--threshold", "0.3"], 0.3),
])
def test_predict_writes_the_recommended_mask_unless_raw_or_threshold(with_and_without_recommended, tmp_path,
                                                                     model, options, settings, capsys):
    from engine.imageio import read_mask

    base, paths = with_and_without_recommended
    image = base / "data" / "images" / "synth_002.png"
    assert main(["predict", "--checkpoint", str(paths[model]), "--input", str(image), "--output", str(tmp_path),
                 *options]) == 0
    written = read_mask(tmp_path / "synth_002_mask.png")
    assert np.array_equal(written, expected_mask(paths[model], image, settings))


@pytest.mark.parametrize("model, options, words", [
    ("recommended", [], "masks: the model's recommended settings"),
    ("none", [], "masks: the default post-processing (the model has no recommended settings)"),
    ("recommended", ["--raw"], "masks: the probability map at 0.5, not post-processed"),
])
def test_predict_says_which_settings_made_the_masks(with_and_without_recommended, tmp_path, model, options, words,
                                                    capsys):
    base, paths = with_and_without_recommended
    image = base / "data" / "images" / "synth_002.png"
    main(["predict", "--checkpoint", str(paths[model]), "--input", str(image), "--output", str(tmp_path), *options])
    assert capsys.readouterr().out.splitlines()[-1] == words


@pytest.mark.parametrize("options, expected", [
    ([], {"threshold": 0.5}),  # evaluate keeps the plain 0.5 map, for comparability
    (["--recommended"], "recommended"),
])
def test_evaluate_scores_the_plain_map_unless_recommended(with_and_without_recommended, options, expected, capsys):
    from engine.postprocess import PostProcessConfig

    base, paths = with_and_without_recommended
    assert main(["evaluate", "--checkpoint", str(paths["recommended"]), "--data", str(base / "data"), *options]) == 0
    result = json.loads(capsys.readouterr().out)
    want = PostProcessConfig(**RECOMMENDED).to_dict() if expected == "recommended" else expected
    assert result["postprocess"] == want


EPOCH_END = {"type": "epoch_end", "epoch": 31, "total_epochs": 60, "train_loss": 0.3, "val_loss": 0.4,
             "val_dice": 0.7, "lr": 1e-3, "seconds": 9.0, "elapsed": 300.0, "is_best": False}


@pytest.mark.parametrize("budget_s, expected", [
    (None, "epoch 31/60 [########################]"),
    (600.0, "epoch 31, 5.0 of 10 min [############............]"),   # the budget ends it, not epoch 60
])
def test_the_progress_line_of_a_budgeted_run_counts_its_time(budget_s, expected):
    import io

    from engine.cli.train import ProgressBar

    out = io.StringIO()
    ProgressBar(stream=out, budget_s=budget_s)(EPOCH_END)
    assert out.getvalue().lstrip("\r").startswith(expected + " ")


@pytest.mark.parametrize("write, refused_for_the_file", [(False, True), (True, False)])
def test_the_worker_reads_its_token_from_a_file(tmp_path, monkeypatch, capsys, write, refused_for_the_file):
    import threading

    from engine.jobs.queue import STOPPING

    monkeypatch.delenv("ML_MANAGER_TOKEN", raising=False)
    token_file = tmp_path / "api_token"
    if write:
        token_file.write_text("a-token\n")
    # port 9 answers nothing: a worker that read its file goes on to wait for the dashboard, until it is stopped
    stop = threading.Timer(1.0, STOPPING.set)
    stop.start()
    try:
        code = main(["worker", "--server", "http://127.0.0.1:9", "--token-file", str(token_file)])
    finally:
        stop.cancel()
        STOPPING.clear()
    assert (code, "The token file" in capsys.readouterr().err) == (2, refused_for_the_file)
