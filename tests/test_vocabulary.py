"""The registry's stop reasons are one vocabulary: the codes storage.db accepts, each with the words the pages show."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ui.formatting import stop_reason_text
from storage import db as store
from engine.errors import UserError

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


@pytest.mark.parametrize("code", list(store.STOP_REASONS))
def test_every_stop_reason_is_shown_in_words(code):
    assert stop_reason_text(code) not in ("", code)


def test_the_documented_stop_reasons_are_the_registry_s():
    documented = re.search(r"stop_reason \(([^)]*)\)", ARCHITECTURE.read_text())[1]
    assert set(re.findall(r"'(\w+)'", documented)) == set(store.STOP_REASONS)


def test_the_registry_refuses_a_stop_reason_outside_the_vocabulary(home):
    model_id = store.create_model("vocabulary", {}, "synthetic")
    with pytest.raises(UserError, match="is not one of"):
        store.update_model(model_id, stop_reason="tired")
