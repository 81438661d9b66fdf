"""`python -m engine prune` (engine.cli.main in this process): what it prints, a dry run, bad arguments."""
from __future__ import annotations

import pytest

from engine.cli import main as cli_main
from storage import db as store
from tests.housekeeping_helpers import checkpoint_names, epoch_names, inference_job, model_with_files


# --------------------------------------------------------------------------- the CLI

def test_cli_prune_prints_each_removal_and_the_space_freed(home, capsys):
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3)], size=1_500_000)
    code = cli_main(["prune", model_id, "--keep", "1"])
    out = capsys.readouterr().out.splitlines()
    assert (code, out) == (0, [f"removed checkpoint models/{model_id}/checkpoints/epoch_001.pt (1.5 MB)",
                               f"removed checkpoint models/{model_id}/checkpoints/epoch_002.pt (1.5 MB)",
                               "2 item(s); freed 3.0 MB"])


def test_cli_prune_dry_run_changes_nothing(home, capsys):
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3)])
    inference_job("completed", 40)
    code = cli_main(["prune", "--keep", "0", "--inference-older-than", "30", "--dry-run"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert (code, last, len(checkpoint_names(model_id)), len(store.list_inference_jobs())) == (
        0, "4 item(s); would free 0.0 MB", 4, 1)


@pytest.mark.parametrize("argv, message", [
    (["prune", "--keep", "-2"], "--keep takes a whole number"),
    (["prune", "--inference-older-than", "soon"], "number of days"),
])
def test_cli_prune_bad_arguments_exit_2_with_one_line(home, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    err = capsys.readouterr().err
    assert (exit_info.value.code, message in err, err.count("\n")) == (2, True, 1)


def test_cli_prune_of_an_unknown_model_is_one_sentence(home, capsys):
    code = cli_main(["prune", "nope"])
    err = capsys.readouterr().err
    assert (code, err) == (2, "error: There is no model with id 'nope'; check the id in the model list.\n")
