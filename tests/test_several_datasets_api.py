"""POST /api/v1/training/start with ``"dataset": [...]`` over real HTTP (the session's server and real worker,
tests/api_helpers.py): the run trains on every set and the registry lists them; a single text keeps working;
a bad list is a 400 (403 outside the allowed folders) with a sentence, and no run is registered or queued."""
from __future__ import annotations

import shutil

import pytest

from storage import db as store
from tests.api_helpers import TINY, api  # noqa: F401 (a fixture)
from tests.several_datasets_helpers import sets  # noqa: F401 (a fixture)
from tests.worker_helpers import wait_for

pytestmark = pytest.mark.slow
ENDED = ("completed", "failed", "stopped")


@pytest.fixture(scope="module")
def inside(api, sets) -> dict[str, str]:
    """The synthetic sets copied into the server's data home, by name: the paths a request sends."""
    for name, folder in sets.items():
        shutil.copytree(folder, api.home / "datasets" / f"multi_{name}", dirs_exist_ok=True)
    return {name: f"datasets/multi_{name}" for name in sets}


def start(api, dataset, name: str) -> tuple[int, dict]:
    return api.call("POST", "/api/v1/training/start", {"name": name, "dataset": dataset, "plan": False,
                                                       "training_config": {**TINY, "epochs": 1}})


@pytest.mark.parametrize("names", [["a", "b"], "a"])
def test_a_run_trains_on_every_data_set_it_was_sent(api, inside, names):
    status, answer = start(api, [inside[n] for n in names] if isinstance(names, list) else inside[names], "multi")
    ended = wait_for(lambda: (s := api.status(answer["model_id"]))["status"] in ENDED and s, 180, 0.2, "the run")
    listed = next(m for m in api.call("GET", "/api/v1/models")[1]["models"] if m["id"] == answer["model_id"])
    expected = [str((api.home / inside[n]).resolve()) for n in (names if isinstance(names, list) else [names])]
    assert (status, ended["status"], ended["datasets"], listed["datasets"]) == (202, "completed", expected, expected)


@pytest.mark.parametrize("dataset, code, words", [
    ([], 400, "empty list"),
    (["{a}", "datasets/multi_missing"], 400, "does not exist"),
    (["{a}", "{empty}"], 400, "empty"),
    (["{a}", "{no_masks}"], 400, "mask"),
    (["{a}", "{b}", "{a}"], 400, "listed twice"),
    (["{a}", 7], 400, "non-empty text"),
    (["{a}", "/etc"], 403, "ML_MANAGER_API_FOLDERS"),
])
def test_a_bad_list_is_refused_with_a_sentence_and_nothing_is_registered(api, inside, dataset, code, words):
    sent = [item.format(**inside) if isinstance(item, str) else item for item in dataset]
    status, answer = start(api, sent, "bad-list")
    assert (status, words.lower() in answer["error"].lower(),
            [m for m in store.list_models() if m["name"] == "bad-list"]) == (code, True, [])
