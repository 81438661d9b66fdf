"""The README's "Command line" block runs as written (tests/readme_helpers.py says how)."""
from __future__ import annotations

import subprocess

import pytest

from tests.readme_helpers import ROOT, block

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)  # the two-set training's first epoch (250 steps) may take EPOCH_S on a busy machine
def test_the_command_line_block_runs_as_written(readme_shell):
    shell = readme_shell
    commands = block("Command line")
    shell.run(commands[0])  # synthesize: the data set the others use
    from engine.inference.predictor import CLASSICAL

    # `cancel JOB_ID` needs a queued batch job (no worker runs in this block, so it stays queued)
    made = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                           "import sys; from engine.jobs import start_inference; "
                           f"print(start_inference({CLASSICAL!r}, sys.argv[1], None))",
                           str(shell.home / "datasets" / "synth" / "images")],
                          cwd=ROOT, env=shell.env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    shell.ids["JOB_ID"] = made.stdout.strip().splitlines()[-1]
    shell.run_block(commands[1:])
    backup = shell.tmp / "backup"
    assert (backup / "ml_manager.db").exists(), shell.skipped
