"""The HTTP API's test server: `streamlit run server.py` (as `make run` starts it) on a free port with a
temporary data home, and the calls tests/test_api*.py make to it. One server and one real worker
(tests.worker_helpers.Worker) serve the whole session (``served_api`` in tests/conftest.py); ``api`` is
that server with the test module's own process on its data home (import it into the module)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser_helpers import free_port
from tests.worker_helpers import ROOT, wait_for


TINY = {"base_channels": 4, "depth": 2, "patch_size": 32, "batch_size": 2, "steps_per_epoch": 3, "epochs": 3,
        "num_threads": 1, "val_fraction": 0.25, "early_stopping_patience": 0, "calibrate_postprocess": True}
LONG = {**TINY, "epochs": 10_000, "calibrate_postprocess": False}  # runs until stopped


class Server:
    """`streamlit run server.py` on a free port; ``call`` sends one request and returns (status, JSON)."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.log = home / "logs" / "server.log"
        env = {**os.environ, "ML_MANAGER_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("streamlit")), "run", "server.py", "--server.port", str(self.port),
                 "--server.address", "127.0.0.1", "--server.headless", "true",
                 "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=log)
        self.token = wait_for(self._token, 60, 0.1, "the API token file")
        wait_for(lambda: self._up(), 90, 0.2, "GET /api/v1/health to answer 200")

    def _token(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited:\n{self.log.read_text()[-3000:]}")
        path = self.home / "api_token"
        return path.read_text().strip() if path.exists() else None

    def _up(self) -> bool:
        try:
            return self.call("GET", "/api/v1/health")[0] == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body=None, *, token: str | None = "", headers: dict | None = None,
             raw: bytes | None = None) -> tuple[int, dict]:
        """One request; ``token=None`` sends no Authorization header, ``raw`` sends bytes as they are."""
        sent = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        if body is not None or raw is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=raw if raw is not None else (json.dumps(body) if body is not None else None),
                         headers=sent)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        return response.status, json.loads(text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


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
