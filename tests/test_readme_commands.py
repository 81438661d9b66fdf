"""The README's ```bash blocks, each run as written by one file (tests/readme_helpers.py says how): this one
checks the list of blocks and runs the first; tests/test_readme_command_line.py, tests/test_readme_http_api.py
and tests/test_readme_several_machines.py run the others, so the blocks run side by side in `make test`."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_helpers import BLOCKS, block

pytestmark = pytest.mark.slow

RUN_BY = {"ML Manager": "test_readme_commands.py", "Command line": "test_readme_command_line.py",
          "HTTP API": "test_readme_http_api.py", "Several machines": "test_readme_several_machines.py"}


def test_the_readme_has_the_shell_blocks_this_file_runs():
    assert [heading for heading, _ in BLOCKS] == ["ML Manager", "Command line", "HTTP API", "Several machines"]


def test_a_file_runs_each_block():
    here = Path(__file__).parent
    assert [(heading, (here / RUN_BY[heading]).is_file()) for heading, _ in BLOCKS] == \
        [(heading, True) for heading in RUN_BY]


def test_the_first_block_starts_the_dashboard_and_the_tests(readme_shell):
    readme_shell.run_block(block("ML Manager"))
    assert readme_shell.api("/api/v1/health")[1].get("worker") == "up"
