"""``python -m engine evaluate`` scores any number of photographs in memory that does not grow with their number."""
from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest

from engine.cli import main
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
