"""The presets: the ``presets`` table, named post-processing settings saved for a run (or for the classical
filter, ``BASELINE``); a preset's ``config`` comes back as a dict."""
from __future__ import annotations

import json

from sqlite_utils import Database

from storage.connection import execute_write, fetch_rows, using, utc_now
from storage.errors import UserError
from storage.runs import get_model
from storage.vocabulary import BASELINE


def save_preset(model_id: str, name: str, config: dict, db: Database | None = None) -> None:
    """Save (or overwrite) a named post-processing preset for a model (or for ``"baseline"``)."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("A preset needs a name: give a short non-empty text such as 'thin vessels'.")
    if not isinstance(config, dict):
        raise UserError(f"A preset's config must be a dict of post-processing settings, not {type(config).__name__}.")
    now = utc_now()
    with using(db) as db:
        if model_id != BASELINE:
            get_model(model_id, db=db)
        execute_write(db, "INSERT INTO presets (model_id, name, config, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT (model_id, name) DO UPDATE SET config = excluded.config, "
                          "updated_at = excluded.updated_at",
                      [model_id, name.strip(), json.dumps(config, sort_keys=True), now, now])


def list_presets(model_id: str, db: Database | None = None) -> list[dict]:
    """A model's presets, by name; each ``config`` is a dict."""
    with using(db) as db:
        rows = fetch_rows(db, "SELECT * FROM presets WHERE model_id = ? ORDER BY name", [model_id])
    for row in rows:
        row["config"] = json.loads(row["config"])
    return rows
