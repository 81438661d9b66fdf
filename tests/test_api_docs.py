"""docs/ARCHITECTURE.md names only HTTP routes that exist, with their methods, and names every one."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.api import api_routes

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
# `POST /api/v1/training/start`, `GET /inference/results/{job_id}` (paths under the API's /api/v1 prefix)
NAMED = re.compile(r"\b(GET|POST|PUT|DELETE|PATCH) (/[\w{}/.\-]*[\w}])")
CATCH_ALL = "/api/v1/{rest:path}"  # answers 404 with a sentence for any other path


def _documented() -> list[tuple[str, str]]:
    found = NAMED.findall(ARCHITECTURE.read_text())
    return sorted({(method, path if path.startswith(("/api/v1/", "/ml_manager/")) else "/api/v1" + path)
                   for method, path in found})


def _served() -> set[tuple[str, str]]:
    # the original system's paths are served with and without a trailing slash; the architecture names them once
    return {(method, route.path.rstrip("/")) for route in api_routes("a-token") if route.path != CATCH_ALL
            for method in route.methods or () if method != "HEAD"}


@pytest.mark.parametrize("method, path", _documented(), ids=lambda v: v)
def test_every_route_the_architecture_names_exists(method, path, home):
    assert (method, path) in _served()


def test_the_architecture_names_every_route(home):
    assert _served() - set(_documented()) == set()


def test_a_route_that_does_not_exist_would_be_found(home):
    assert ("POST", "/api/v1/trainings") not in _served()
