"""Housekeeping on the pages (AppTest): disk use and deleting inference results on the Overview, pruning
and deleting checkpoints on the Models page."""
from __future__ import annotations

from pathlib import Path

from engine import housekeeping
from storage import db as store
from tests.housekeeping_helpers import checkpoint_names, epoch_names, inference_job, model_with_files


# --------------------------------------------------------------------------- the pages (AppTest)

def _app(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_overview_shows_disk_use_by_kind(home):
    model_with_files(["best.pt"], size=2_000_000)
    at = _app()
    shown = {m.label: m.value for m in at.metric}
    assert (shown["Checkpoints"], shown["Inference results"], shown["Uploads"]) == ("2.0 MB", "0.0 MB", "0.0 MB")


def test_the_overview_deletes_inference_results_after_asking(home):
    job_id = inference_job("completed")
    at = _app()
    at.selectbox(key="hk_job_pick").select(job_id).run()
    at.button(key="hk_job_delete").click().run()
    asked = store.list_inference_jobs() != []
    at.button(key="hk_job_delete_yes").click().run()
    assert (asked, store.list_inference_jobs(), [s.value for s in at.success]) == (
        True, [], [f"Deleted job {job_id} (0.0 MB)."])


def test_the_models_page_deletes_older_checkpoints_and_one_checkpoint(home, monkeypatch):
    monkeypatch.setenv(housekeeping.KEEP_ENV, "3")  # the page's default for "Epoch checkpoints to keep"
    model_id = model_with_files(["best.pt", "last.pt", *epoch_names(1, 2, 3, 4)])
    at = _app("pages/models.py")
    at.selectbox(key="models_detail").select(model_id).run()
    at.button(key=f"hk_prune_{model_id}").click().run()
    at.button(key=f"hk_prune_{model_id}_yes").click().run()
    after_prune = checkpoint_names(model_id)
    at.selectbox(key=f"hk_ckpt_pick_{model_id}").select("epoch_002.pt").run()
    at.button(key=f"hk_ckpt_delete_{model_id}").click().run()
    at.button(key=f"hk_ckpt_delete_{model_id}_yes").click().run()
    assert (after_prune, checkpoint_names(model_id)) == (sorted(["best.pt", "last.pt", *epoch_names(2, 3, 4)]),
                                               sorted(["best.pt", "last.pt", *epoch_names(3, 4)]))
