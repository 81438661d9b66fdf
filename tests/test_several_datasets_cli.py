"""``python -m engine train`` and ``submit`` with ``--data`` once per data set (engine.cli.main in this process,
and one subprocess as a user runs it): the run trains on, or queues, every set; a bad list is one sentence,
exit status 2, and nothing trained, registered or queued."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import engine.jobs as jobs
from engine.cli import main
from storage import db as store
from tests.several_datasets_helpers import TINY, checkpoint_sets, sets  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]


def tiny_options() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def test_train_on_two_data_sets_records_both_in_its_checkpoint(sets, tmp_path, capsys):
    import torch

    code = main(["train", "--data", str(sets["a"]), "--data", str(sets["b"]), "--out", str(tmp_path / "run"),
                 "--no-plan", *tiny_options()])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert (code, [s["name"] for s in ckpt["scale"]["datasets"]]) == (0, ["a", "b"])


def test_submit_queues_one_run_on_every_data_set(home, sets, capsys):
    code = main(["submit", "--data", str(sets["a"]), "--data", str(sets["b"]), "--no-plan", *tiny_options()])
    model_id = capsys.readouterr().out.strip()
    assert (code, store.model_datasets(store.get_model(model_id)), jobs.queue_length()) == (
        0, [str(sets["a"].resolve()), str(sets["b"].resolve())], 1)


@pytest.mark.parametrize("command", ["train", "submit"])
@pytest.mark.parametrize("names, words", [  # the bad set first: a --data given once would keep only the last
    (["missing", "a"], "does not exist"),
    (["empty", "a"], "empty"),
    (["no_masks", "a"], "mask"),
    (["a", "b", "a"], "listed twice"),
])
def test_a_bad_list_is_one_sentence_exit_2_and_nothing_is_queued(home, sets, tmp_path, capsys, command, names,
                                                                   words):
    data = [arg for n in names for arg in ("--data", str(sets.get(n, sets["a"].parent / n)))]
    out = ["--out", str(tmp_path / "run")] if command == "train" else []
    code = main([command, *data, *out, *tiny_options()])
    err = capsys.readouterr().err.strip()
    assert (code, err.count("\n"), words.lower() in err.lower(), (tmp_path / "run").exists(), store.list_models(),
            jobs.queue_length()) == (2, 0, True, False, [], 0)


def test_the_command_line_takes_several_data_sets_as_a_user_types_them(home, sets):
    done = subprocess.run([sys.executable, "-m", "engine", "submit", "--data", str(sets["a"]), "--data",
                           str(sets["a"]), "--no-plan"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (done.returncode, "listed twice" in done.stderr, store.list_models()) == (2, True, [])
