"""One root for the errors users see: every sentence error is a UserError, and the faces tell a sentence
from a bug with ``engine.errors.user_error`` (a bug's message never reaches the user as if it were one)."""
from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.api import ApiError
from engine.api_worker_requests import UploadRefused
from engine.cli.common import CliError
from engine.errors import UserError, error_text, number_or_none, user_error
from engine.housekeeping import HousekeepingError
from engine.imageio import ImageReadError
from engine.postprocess import PostProcessConfig
from engine.remote.client import DashboardError
from engine.training.checkpoint import CheckpointError
from engine.training.config import TrainingError
from engine.training.data import DatasetError
from engine.training.planner import PlanError
from storage import db as store
from storage.archives import ArchiveError
from storage.paths import StorageError

APP_TIMEOUT = 60  # seconds per AppTest run on a busy 2-core machine


@pytest.mark.parametrize("kind", [
    ApiError, UploadRefused, CliError, HousekeepingError, ImageReadError, DashboardError, CheckpointError,
    TrainingError, DatasetError, PlanError, ArchiveError, StorageError, store.UnknownModelError,
    store.UnknownJobError, store.WrongStateError, store.DuplicateSubmissionError,
], ids=lambda kind: kind.__name__)
def test_every_sentence_error_has_the_one_root(kind):
    assert issubclass(kind, UserError)


def test_a_user_error_is_its_own_sentence():
    error = UserError("Choose a data set first.")
    assert user_error(error) is error


def test_the_registry_s_refusal_is_a_user_error(home):
    with pytest.raises(UserError) as caught:
        store.get_model("no-such-model")
    assert user_error(caught.value) is caught.value


def test_a_config_s_refusal_is_a_user_error():
    with pytest.raises(UserError) as caught:
        PostProcessConfig(threshold=5.0)
    assert user_error(caught.value) is caught.value


def test_a_user_error_is_no_value_error():
    """A face that caught ValueError would take a bug's ValueError for a sentence."""
    assert not issubclass(UserError, ValueError)


def _bug() -> None:
    raise ValueError("invalid literal for int() with base 10: 'x'")


@pytest.mark.parametrize("raise_it", [
    _bug,                                          # a ValueError raised in our own code
    lambda: np.zeros((2, 2)).reshape(3),          # one raised by a library
    lambda: int("x"),                              # one raised by a builtin
    lambda: {}["missing"],                         # not a ValueError at all
], ids=["ours", "numpy", "builtin", "key-error"])
def test_any_other_error_is_a_bug(raise_it):
    with pytest.raises(Exception) as caught:
        raise_it()
    assert user_error(caught.value) is None


def test_a_job_s_row_names_a_bug_and_points_to_the_log():
    with pytest.raises(ValueError) as caught:
        _bug()
    assert error_text(caught.value).endswith("(the traceback is in the worker log)")


@pytest.mark.parametrize("text, expected", [
    ("0.5", 0.5), (" 3 ", 3.0), ("-2e-1", -0.2), ("x", None), ("", None), ("nan", None), ("inf", None), (None, None),
])
def test_number_or_none(text, expected):
    assert number_or_none(text) == expected


def _page_with_a_bug() -> None:
    from ui.runtime import user_errors

    with user_errors("drawing the test page"):
        raise ValueError("invalid literal for int() with base 10: 'secret internals'")


def _page_with_a_user_error() -> None:
    from engine.errors import UserError
    from ui.runtime import user_errors

    with user_errors("drawing the test page"):
        raise UserError("Choose a data set first.")


def test_the_dashboard_shows_a_bug_as_an_internal_error_with_the_log(home):
    at = AppTest.from_function(_page_with_a_bug, default_timeout=APP_TIMEOUT).run()
    shown = " ".join(e.value for e in at.error)
    assert "secret internals" not in shown
    assert "dashboard.log" in shown


def test_the_dashboard_shows_a_user_error_as_its_sentence(home):
    at = AppTest.from_function(_page_with_a_user_error, default_timeout=APP_TIMEOUT).run()
    assert [e.value for e in at.error] == ["Choose a data set first."]
