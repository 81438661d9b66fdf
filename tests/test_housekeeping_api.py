"""POST /api/v1/prune over real HTTP: the API's routes served by uvicorn in this process."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.browser_helpers import free_port
from tests.worker_helpers import wait_for
from tests.housekeeping_helpers import checkpoint_names, epoch_names, model_with_files


# --------------------------------------------------------------------------- the API route, over real HTTP

@pytest.fixture
def api(home):
    """The API's routes served by uvicorn on a free port in this process; ``call(body, headers)``."""
    import http.client

    import uvicorn
    from starlette.applications import Starlette

    from engine.api import api_routes

    token, port = "t" * 32, free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=api_routes(token)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "uvicorn to start")

    def call(body, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
        try:
            conn.request("POST", "/api/v1/prune", body=raw if raw is not None else json.dumps(body), headers=sent)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    yield call
    server.should_exit = True
    thread.join(10)


def test_api_prune_removes_and_reports_like_the_cli(api):
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3)], size=1000)
    status, body = api({"model_id": model_id, "keep": 2})
    assert (status, body["freed_bytes"], [Path(r["path"]).name for r in body["removed"]], checkpoint_names(model_id)) == (
        200, 1000, ["epoch_001.pt"], ["best.pt", *epoch_names(2, 3)])


def test_api_prune_dry_run_changes_nothing(api):
    model_id = model_with_files(["best.pt", *epoch_names(1, 2, 3)], size=1000)
    status, body = api({"keep": 0, "dry_run": True})
    assert (status, body["freed_bytes"], body["dry_run"], len(checkpoint_names(model_id))) == (200, 3000, True, 4)


@pytest.mark.parametrize("body, headers, raw, expected", [
    ({"keep": -1}, None, None, 400),
    ({"keep": "2"}, None, None, 400),
    ({"inference_older_than": -3}, None, None, 400),
    ({"dry_run": "yes"}, None, None, 400),
    ({"older": 3}, None, None, 400),
    ({"model_id": "nope"}, None, None, 404),
    ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, None, 401),
    ({}, {"Origin": "http://evil.example"}, None, 403),
    ({}, {"Content-Type": "text/plain"}, None, 415),
    (None, None, b"[1, 2]", 400),
])
def test_api_prune_refusals(api, body, headers, raw, expected):
    status, answer = api(body, headers, raw)
    assert (status, isinstance(answer.get("error"), str)) == (expected, True)
