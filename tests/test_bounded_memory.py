"""``python -m engine evaluate`` and batch jobs handle any number of photographs in memory that does not grow
with their number (tracemalloc counts numpy's arrays and Python's objects)."""
from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest

from engine.cli import main
from engine.inference.batch import run_images
from storage.db import BASELINE
from engine.training.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same 768 px photographs, 3 of them in one data set and 10 in another."""
    many = make_synthetic_dataset(tmp_path_factory.mktemp("many"), n_images=10, size=768, seed=4)
    few = tmp_path_factory.mktemp("few") / "set"
    for sub in ("images", "masks", "fov"):
        (few / sub).mkdir(parents=True)
        for path in sorted((many / sub).iterdir())[:3]:
            shutil.copy(path, few / sub / path.name)
    return few, many


def _peak_bytes(folder, capsys) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        assert main(["evaluate", "--checkpoint", "baseline", "--data", str(folder)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, json.loads(capsys.readouterr().out)


def test_four_times_the_photographs_take_no_more_memory(folders, capsys):
    few, many = folders
    peak_few, _ = _peak_bytes(few, capsys)
    peak_many, result = _peak_bytes(many, capsys)
    assert result["n_images"] == 10
    assert peak_many < 1.3 * peak_few


def _batch_peak(folder, out) -> tuple[int, dict]:
    row = {"checkpoint_path": BASELINE, "postprocess": "{}", "scale": "auto", "input_path": str(folder)}
    tracemalloc.start()
    try:
        outcome = run_images(row, out, folder / "images", on_progress=lambda **counts: None, cancelled=lambda: False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, outcome


def test_a_batch_job_of_four_times_the_photographs_takes_no_more_memory(folders, tmp_path):
    few, many = folders
    peak_few, _ = _batch_peak(few, tmp_path / "few")
    peak_many, outcome = _batch_peak(many, tmp_path / "many")
    assert outcome["status"] == "completed"
    assert peak_many < 1.3 * peak_few
