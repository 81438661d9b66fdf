"""Words the pages show for the registry's codes cover exactly the codes storage.db defines."""
from __future__ import annotations

from pages.components import STOP_REASONS as STOP_REASON_WORDS
from storage import db as store


def test_every_stop_reason_has_words_and_no_other_has():
    assert set(STOP_REASON_WORDS) == set(store.STOP_REASONS)
