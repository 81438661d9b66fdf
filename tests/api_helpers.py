"""The HTTP API's test server: `streamlit run server.py` (as `make run` starts it) on a free port with a
temporary data home, and the calls tests/test_api*.py make to it. One server and one real worker
(tests.worker_helpers.Worker) serve the whole session (``served_api`` in tests/conftest.py); ``api`` is
that server with the test module's own process on its data home (import it into the module)."""
from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.remote_helpers import Dashboard
from tests.worker_helpers import wait_for


TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": True}
LONG = {**TINY, "epochs": 10_000, "calibrate_postprocess": False}  # runs until stopped


class Server(Dashboard):
    """`streamlit run server.py` on a free port and data home ``home``; ``call`` sends one request and returns
    (status, JSON)."""

    def __init__(self, home: Path):
        super().__init__(home, {})


@pytest.fixture(scope="module")
def api(served_api):
    """The session's server and worker (``served_api`` in tests/conftest.py), with this module's process on
    their data home too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ML_MANAGER_HOME", str(served_api.home))
        mp.delenv("ML_MANAGER_API_FOLDERS", raising=False)
        yield served_api


def wait_job(api, job_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (s := api.call("GET", f"/api/v1/inference/status/{job_id}")[1])["status"]
                    not in ("queued", "running") and s, timeout, 0.1, "the inference job to end")


def download(api, path: str, token: str | None = "") -> tuple[int, str, bytes]:
    """GET ``path`` as bytes: (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request("GET", path, headers={} if token is None else {"Authorization": f"Bearer {token or api.token}"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()
