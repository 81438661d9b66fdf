"""The HTTP API over real HTTP, who may call it and what it refuses: the token and foreign origins,
malformed requests, unknown ids, routes and methods, and paths outside the allowed folders.

The server is `streamlit run server.py` (as `make run` starts it) on a free port with a temporary data home and
a real worker, one for the session (tests/api_helpers.py); the routes with that worker: tests/test_api_jobs.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main as cli_main
from engine.training.synthetic import make_synthetic_dataset
from storage import db as store
from tests.api_helpers import TINY, api  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- who may call

def test_token_file_is_private(api):
    assert (api.home / "api_token").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("token, headers, expected", [
    (None, {}, 401),                                                 # no token
    ("not-the-token", {}, 401),                                      # wrong token
    ("", {"Authorization": "Basic dXNlcjpwYXNz"}, 401),              # another scheme
    ("", {"Origin": "http://evil.example"}, 403),                    # a foreign web page
    ("", {"Origin": "http://127.0.0.1:1"}, 403),                     # another local port is another origin
    ("", {"Sec-Fetch-Site": "cross-site"}, 403),                     # a browser's cross-site request
    ("", {"Origin": "http://127.0.0.1:{port}"}, 200),                # the dashboard itself
    ("", {"Origin": "http://localhost:{port}"}, 200),
    ("", {}, 200),                                                   # a script with the token
])
def test_who_may_call(api, token, headers, expected):
    headers = {k: v.format(port=api.port) for k, v in headers.items()}
    assert api.call("GET", "/api/v1/health", token=token, headers=headers)[0] == expected


def test_a_foreign_page_cannot_stop_a_training_even_with_the_token(api):
    status, body = api.call("POST", "/api/v1/training/stop", {"model_id": "x"}, headers={"Origin": "http://evil.example"})
    assert status == 403
    assert "web page" in body["error"]


def test_missing_token_says_where_the_token_is(api):
    assert str(api.home / "api_token") in api.call("GET", "/api/v1/models", token=None)[1]["error"]


# --------------------------------------------------------------------------- malformed requests

@pytest.mark.parametrize("path, raw, content_type, expected", [
    ("/api/v1/training/stop", b'{"model_id": "x"}', "text/plain", 415),
    ("/api/v1/training/stop", b'model_id=x', "application/x-www-form-urlencoded", 415),
    ("/api/v1/training/stop", b'{"model_id": ', "application/json", 400),
    ("/api/v1/training/stop", b'\xff\xfe', "application/json", 400),
    ("/api/v1/training/stop", b'["x"]', "application/json", 400),
    ("/api/v1/training/stop", b'{"model_id": true}', "application/json", 400),
    ("/api/v1/training/stop", b'{"model_id": 2.5}', "application/json", 400),
    ("/api/v1/training/stop", b'{"model_id": "x", "force": true}', "application/json", 400),
    ("/api/v1/training/stop", b'{}', "application/json", 400),
    ("/api/v1/training/start", b'{"model_id": "x", "resume": "yes"}', "application/json", 400),
    ("/api/v1/training/start", b'{"name": "n", "dataset": "datasets/synth", "training_config": [1]}',
     "application/json", 400),
    ("/api/v1/training/start", b'{"name": "", "dataset": "datasets/synth"}', "application/json", 400),
    ("/api/v1/training/start", b'{"name": "n", "dataset": "datasets/synth", "training_config": {"epochs": "many"}}',
     "application/json", 400),
    ("/api/v1/training/start", b'{"name": "n", "dataset": "datasets/synth", "training_config": {"no_such": 1}}',
     "application/json", 400),
    # unplanned, the default 128 px patches do not fit the 64 px images (a plan would choose patches that fit)
    ("/api/v1/training/start", b'{"name": "n", "dataset": "datasets", "plan": false}', "application/json", 400),
    ("/api/v1/training/start", b'{"name": "n", "dataset": "datasets/synth", "plan": "yes"}', "application/json", 400),
    ("/api/v1/inference/start", b'{"model_id": "baseline", "input": "datasets/synth/images", "postprocess": 3}',
     "application/json", 400),
    ("/api/v1/inference/start", b'{"model_id": "baseline", "input": "datasets/synth/images", '
                                b'"postprocess": "recommended"}', "application/json", 400),
    ("/api/v1/inference/start", b'{"model_id": "baseline", "input": "datasets/synth/images", '
                                b'"postprocess": {"threshold": 7}}', "application/json", 400),
    ("/api/v1/inference/start", b'{"input": "datasets/synth/images"}', "application/json", 400),
    ("/api/v1/inference/start", b'{"model_id": "baseline", "checkpoint": "a.pt", "input": "datasets"}',
     "application/json", 400),
    ("/api/v1/inference/cancel", b'{"job_id": null}', "application/json", 400),
])
def test_malformed_requests_are_refused_with_a_sentence(api, path, raw, content_type, expected):
    status, body = api.call("POST", path, raw=raw, headers={"Content-Type": content_type})
    assert status == expected
    assert str(body.get("error")).endswith((".", ")"))  # a sentence


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/api/v1/training/status/no-such-model", 404),
    ("GET", "/api/v1/models/no-such-model/checkpoints", 404),
    ("GET", "/api/v1/inference/status/no-such-job", 404),
    ("GET", "/api/v1/no/such/route", 404),
    ("GET", "/api/v1/training/start", 405),
    ("DELETE", "/api/v1/models", 405),
    ("GET", "/api/v1/models?status=sleeping", 400),
    ("GET", "/api/v1/training/status/no-such-model?history=maybe", 400),
])
def test_unknown_ids_routes_and_methods(api, method, path, expected):
    assert api.call(method, path)[0] == expected


@pytest.mark.parametrize("path, body", [
    ("/api/v1/training/start", {"model_id": "no-such-model"}),
    ("/api/v1/training/stop", {"model_id": "no-such-model"}),
    ("/api/v1/inference/cancel", {"job_id": "no-such-job"}),
    ("/api/v1/inference/start", {"model_id": "no-such-model", "input": "datasets/synth/images"}),
])
def test_unknown_ids_in_bodies_are_404(api, path, body):
    assert api.call("POST", path, body)[0] == 404


def test_error_is_the_sentence_the_cli_prints(api, capsys):
    cli_main(["stop", "no-such-model"])
    printed = capsys.readouterr().err.strip()
    assert "error: " + api.call("POST", "/api/v1/training/stop", {"model_id": "no-such-model"})[1]["error"] == printed


# --------------------------------------------------------------------------- paths stay inside the allowed folders

@pytest.fixture(scope="module")
def outside(api, tmp_path_factory) -> Path:
    """A real data set outside the data home, and a link to it from inside."""
    folder = make_synthetic_dataset(tmp_path_factory.mktemp("elsewhere") / "synth", n_images=4, size=64, seed=2)
    (api.home / "datasets" / "link_out").symlink_to(folder, target_is_directory=True)
    return folder


@pytest.mark.parametrize("dataset", ["../elsewhere/synth", "datasets/../../x", "/etc", "datasets/link_out", "{outside}"])
def test_training_paths_outside_the_data_home_are_refused(api, outside, dataset):
    status, body = api.call("POST", "/api/v1/training/start",
                            {"name": "escape", "dataset": dataset.format(outside=outside), "training_config": TINY})
    assert status == 403
    assert "ML_MANAGER_API_FOLDERS" in body["error"]


@pytest.mark.parametrize("field, value", [("input", "../../etc"), ("input", "datasets/link_out/images"),
                                          ("checkpoint", "/etc/passwd")])
def test_inference_paths_outside_the_data_home_are_refused(api, outside, field, value):
    body = {"input": "datasets/synth/images", "checkpoint": str(api.home / "x.pt"), field: value}
    assert api.call("POST", "/api/v1/inference/start", body)[0] == 403


def test_refused_paths_create_no_model(api, outside):
    api.call("POST", "/api/v1/training/start", {"name": "escape", "dataset": str(outside)})
    assert [m for m in store.list_models() if m["name"] == "escape"] == []
