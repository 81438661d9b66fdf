"""The Train page with several data sets (AppTest against a real data home): "Also train on" adds registered
sets and folders, each with its summary, and Start queues one run on all of them; a list that cannot train
together is a sentence, Start stays disabled and nothing is queued. The Models page names every set."""
from __future__ import annotations

import shutil

import pytest

import engine.jobs as jobs
from storage import db as store
from storage import paths
from tests.pages_helpers import open_page, texts
from tests.several_datasets_helpers import TINY, sets  # noqa: F401 (a fixture)


@pytest.fixture
def registered(home, sets) -> dict[str, str]:
    """The synthetic sets a and b registered in the data home (b the newer, so the page opens on it)."""
    for name in ("a", "b"):
        shutil.copytree(sets[name], paths.datasets_dir() / name)
    return {name: str(paths.datasets_dir() / name) for name in ("a", "b")}


def test_start_queues_one_run_on_the_chosen_and_the_added_data_sets(registered):
    at = open_page("pages/train.py")
    first = at.selectbox(key="train_registered").value
    other = "a" if first == "b" else "b"
    at.multiselect(key="train_more_registered").select(other).run()
    shown = [m.value for m in at.metric]
    at.text_input(key="train_name").input("two-sets")
    at.number_input(key="train_cfg_epochs").set_value(1)
    at.number_input(key="train_cfg_patch_size").set_value(TINY["patch_size"])
    at.button(key="train_start").click().run()
    rows = store.list_models()
    assert (shown, [store.model_datasets(r) for r in rows], jobs.queue_length()) == (
        ["2", "2"], [[str((paths.datasets_dir() / first).resolve()), str((paths.datasets_dir() / other).resolve())]], 1)


@pytest.mark.parametrize("folder, words", [
    ("{missing}", "does not exist"),
    ("{empty}", "empty"),
    ("{no_masks}", "mask"),
    ("{chosen}", "listed twice"),
])
def test_a_list_that_cannot_train_is_a_sentence_and_nothing_is_queued(registered, sets, folder, words):
    at = open_page("pages/train.py")
    chosen = registered[at.selectbox(key="train_registered").value]
    named = {**{k: str(v) for k, v in sets.items()}, "missing": str(sets["a"].parent / "missing"), "chosen": chosen}
    at.text_area(key="train_more_folders").input(folder.format(**named)).run()
    assert (words.lower() in texts(at).lower(), at.button(key="train_start").disabled, store.list_models(),
            jobs.queue_length()) == (True, True, [], 0)


def test_the_models_page_names_every_data_set_of_a_run(home):
    model_id = store.create_model("two-sets", {"epochs": 1}, ["/data/drive/training", "/data/chase_db1/training"])
    at = open_page("pages/models.py", query={"model": model_id})
    assert [m.value for m in at.markdown if "Waiting for the worker" in m.value] == [
        "Waiting for the worker to start it · duration — · data sets `/data/drive/training`, "
        "`/data/chase_db1/training`"]
