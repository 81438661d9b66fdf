"""The README's "HTTP API" block runs on a fresh clone (tests/readme_helpers.py says how)."""
from __future__ import annotations

import json

import pytest

from tests.readme_helpers import block

pytestmark = pytest.mark.slow


def test_the_http_api_block_runs_on_a_fresh_clone(readme_shell):
    shell = readme_shell
    shell.run("make run")  # the section's first words: `make run` serves the API
    shell.run_block(block("HTTP API"))
    answers = [json.loads(out) for command, out in shell.outputs if command.startswith("curl") and "-o " not in command
               and out.strip().startswith("{")]
    started = next(out for command, out in shell.outputs if '"unet-v1"' in command)
    refused = [a["error"] for a in answers if isinstance(a.get("error"), str)
               and ("token" in a["error"] or "no API route" in a["error"] or "failed on this request" in a["error"])]
    assert ('"model_id"' in started, "JOB_ID" in shell.ids, refused) == (True, True, []), shell.outputs
