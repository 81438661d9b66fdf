"""A training run on several data sets, each in its own layout and resolution: the registry's list (and rows
written before it), the refusals of a bad list before anything is queued, the planner on the union, the
balanced sampler, validation held out from every set, the queued run that trains, and continues, on the
list, and small real subsets of DRIVE and CHASE_DB1 (../shared/data). The other faces: tests/
test_several_datasets_{cli,api,pages}.py and tests/test_remote.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sqlite_utils import Database

import engine.jobs as jobs
from engine import housekeeping
from engine.training.data import DatasetError, load_dataset
from engine.training.sampling import PatchSampler
from storage import db as store
from storage import paths
from storage.migrations import MIGRATIONS
from tests.several_datasets_helpers import TINY, checkpoint_sets, real_subsets, sets  # noqa: F401 (a fixture)


# --------------------------------------------------------------------------- the registry

@pytest.mark.parametrize("given, expected", [
    ("/data/a", ["/data/a"]),
    (["/data/a"], ["/data/a"]),
    (["/data/a", "/data/b"], ["/data/a", "/data/b"]),
])
def test_the_registry_keeps_every_data_set_of_a_run(home, given, expected):
    row = store.get_model(store.create_model("run", TINY, given))
    assert (store.model_datasets(row), row["dataset"]) == (expected, expected[0])


def test_a_row_written_before_the_list_reads_as_its_one_data_set(home):
    old = Database(paths.db_path())
    MIGRATIONS.apply(old, stop_before="0007_datasets")
    old["models"].insert({"id": "old-run", "name": "old", "status": "completed", "config": "{}",
                          "dataset": "/data/old", "created_at": store.utc_now()})
    old.close()
    assert store.model_datasets(store.get_model("old-run")) == ["/data/old"]


def test_a_data_set_that_an_active_run_lists_second_cannot_be_deleted(home, sets):
    spare = shutil.copytree(sets["b"], paths.datasets_dir() / "spare")
    store.create_model("busy-run", TINY, [str(sets["a"]), str(spare.resolve())])
    with pytest.raises(store.WrongStateError, match="busy-run"):
        housekeeping.delete_dataset("spare")


# --------------------------------------------------------------------------- refusals before anything is queued

@pytest.mark.parametrize("names, words", [
    ([], "No data set was chosen"),
    (["a", "missing"], "does not exist"),
    (["a", "empty"], "empty"),
    (["a", "no_masks"], "mask"),
    (["a", "b", "a"], "listed twice"),
])
def test_a_bad_list_is_refused_with_a_sentence_and_nothing_is_queued(home, sets, names, words):
    folders = [sets.get(n, sets["a"].parent / n) for n in names]
    with pytest.raises(DatasetError) as refused:
        jobs.submit_training("bad", folders, TINY)
    assert (words.lower() in str(refused.value).lower(), store.list_models(), jobs.queue_length()) == (True, [], 0)


# --------------------------------------------------------------------------- planner, sampler, validation

@pytest.mark.parametrize("names, patches", [
    (["b"], [64, 96]),      # 96 px photographs: 128 px patches do not fit
    (["b", "a"], [64]),     # and 64 px ones: only 64 px patches fit both
])
def test_the_planner_tries_only_patches_that_fit_every_set(sets, names, patches):
    from engine.training.config import TrainingConfig
    from engine.training.planner import plan_for_folder

    config = TrainingConfig(precision="fp32", device="cpu")
    _, plan = plan_for_folder(config, {"precision", "device"}, [sets[n] for n in names],
                              measure=lambda *args, **kw: 1.0)
    assert sorted({t["patch_size"] for t in plan.candidates}) == patches


@pytest.mark.parametrize("groups, share", [
    ([0] + [1] * 9, 0.5),   # one photograph against nine: each set half of the patches
    (None, 0.1),            # unbalanced: every photograph equally often
])
def test_the_balanced_sampler_draws_each_set_about_equally_often(groups, share):
    images = [np.full((1, 32, 32), 1.0 if i == 0 else 0.0, np.float32) for i in range(10)]
    masks = [np.zeros((32, 32), np.uint8) for _ in images]
    stats = [(np.zeros((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32)) for _ in images]
    sampler = PatchSampler(images, masks, [np.ones((32, 32), np.uint8)] * 10, stats, 16, augment=False,
                           groups=groups)
    xs, _ = sampler.sample(4000, np.random.default_rng(0))
    first = float((np.asarray(xs).reshape(4000, -1).mean(axis=1) > 0.5).mean())
    assert abs(first - share) < 0.03


def test_validation_holds_out_images_from_every_set(sets, tmp_path):
    """Two sets of two photographs, a quarter held out: one of each (a quarter of four would be one)."""
    from engine.training.config import TrainingConfig
    from engine.training.loop import train

    events = []
    train(TrainingConfig(**TINY), [sets["a"], sets["b"]], tmp_path / "out", on_event=events.append)
    start = next(e for e in events if e["type"] == "start")
    assert (start["n_train"], start["n_val"]) == (2, 2)


# --------------------------------------------------------------------------- the queued run

def test_a_queued_run_trains_on_every_set_and_continues_on_them(home, sets):
    model_id = jobs.submit_training("two-sets", [sets["a"], sets["b"]], TINY)
    jobs.train_model_task.call_local(model_id, json.loads(store.get_model(model_id)["config"]))
    first = checkpoint_sets(model_id)
    config = {**json.loads(store.get_model(model_id)["config"]), "epochs": 2}
    jobs.start_training(model_id, config, resume=True)
    jobs.train_model_task.call_local(model_id, config, str(paths.checkpoints_dir(model_id) / "last.pt"))
    row = store.get_model(model_id)
    assert (first, checkpoint_sets(model_id), row["status"], row["epochs_run"],
            jobs.training_status(model_id)["datasets"]) == (
        ["a", "b"], ["a", "b"], "completed", 2, [str(sets["a"].resolve()), str(sets["b"].resolve())])


# --------------------------------------------------------------------------- real photographs

def test_real_drive_and_chase_photographs_train_together_in_their_own_layouts(home, tmp_path):
    folders = real_subsets(tmp_path)
    model_id = jobs.submit_training("drive-and-chase", folders, {**TINY, "patch_size": 64})
    jobs.train_model_task.call_local(model_id, json.loads(store.get_model(model_id)["config"]))
    ckpt = torch.load(paths.checkpoints_dir(model_id) / "last.pt", weights_only=True)
    assert (store.get_model(model_id)["status"], [(s["name"], s["layout"], s["n_images"]) for s in
                                                  ckpt["scale"]["datasets"]]) == (
        "completed", [("drive/training", load_dataset(folders[0]).layout, 2),
                      ("chase_db1/training", load_dataset(folders[1]).layout, 2)])
