"""What the HTTP API checks of a request: its fields (known, present, typed) and the paths it names, which
must resolve inside the data home or a folder of ``ML_MANAGER_API_FOLDERS`` (``engine.api`` says why)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from starlette.requests import Request

from engine.errors import UserError
from engine.fields import Field
from storage import paths

FOLDERS_ENV = "ML_MANAGER_API_FOLDERS"


class ApiError(UserError):
    """A request the API refuses, with the HTTP status to answer and a sentence for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def allowed_folders() -> list[Path]:
    """The folders whose files requests may name: the data home, then those in ``ML_MANAGER_API_FOLDERS``."""
    extra = os.environ.get(FOLDERS_ENV, "")
    return [paths.data_home(), *(Path(p).expanduser().resolve() for p in extra.split(os.pathsep) if p.strip())]


def allowed_path(value: Any, what: str) -> Path:
    """Resolve a path from a request (relative ones from the data home), links followed.

    Args:
        value: the path as the caller sent it.
        what: the request field, for the error sentence.
    Returns:
        The resolved absolute path (it may not exist; the engine says so).
    Raises:
        ApiError: 400 when ``value`` is not a non-empty text, 403 when it resolves outside every allowed folder.
    """
    text = _text_value(value, what, "a path such as 'datasets/synthetic'")
    if "\x00" in text:
        raise ApiError(400, f"'{what}' contains a NUL character: send a plain path.")
    raw = Path(text).expanduser()
    path = (raw if raw.is_absolute() else paths.data_home() / raw).resolve()
    folders = allowed_folders()
    if not any(paths.is_inside(path, folder) for folder in folders):
        raise ApiError(403, f"The {what} {text!r} is outside the folders the API may read "
                            f"({', '.join(str(f) for f in folders)}): copy it into the data home, or add its folder "
                            f"to {FOLDERS_ENV} (separated by '{os.pathsep}') and restart the dashboard.")
    return path


def allowed_datasets(value: Any) -> Path | list[Path]:
    """The data set folder(s) of a training request: one path, or a list of paths (each as ``allowed_path``).

    Raises:
        ApiError: 400 when ``value`` is neither a non-empty text nor a non-empty list of them, 403 as ``allowed_path``.
    """
    if not isinstance(value, list):
        return allowed_path(value, "dataset")
    if not value:
        raise ApiError(400, "'dataset' is an empty list: give one data set folder, or a list of them such as "
                            "[\"datasets/drive\", \"datasets/chase\"].")
    return [allowed_path(item, "dataset") for item in value]


# --------------------------------------------------------------------------- request fields

def _text_value(value: Any, key: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"'{key}' must be a non-empty text, such as {example}; got {json.dumps(value)}.")
    return value.strip()


def check_fields(body: dict, required: set[str], optional: set[str] = frozenset()) -> None:
    """Refuse unknown and missing fields, naming them and the allowed ones."""
    unknown = sorted(set(body) - required - set(optional))
    if unknown:
        known = ", ".join(sorted(required | set(optional)))
        raise ApiError(400, f"Unknown field(s) {', '.join(unknown)}: this request takes {known}.")
    missing = sorted(required - set(body))
    if missing:
        raise ApiError(400, f"Missing field(s) {', '.join(missing)}: this request needs {', '.join(sorted(required))}.")


def text_field(body: dict, key: str, example: str = "an id from GET /api/v1/models") -> str:
    """``body[key]`` as a non-empty text, stripped; ApiError (400) naming ``example`` otherwise."""
    return _text_value(body.get(key), key, example)


def model_id_field(body: dict, key: str = "model_id") -> str:
    """A model id from the body: text, or a whole number (older clients send ids as numbers)."""
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text_value(value, key, "an id from GET /api/v1/models")


FLAG = Field(bool, False)
SETTINGS = Field(dict, what='a JSON object of settings such as {"epochs": 20}')


def flag_field(body: dict, key: str) -> bool:
    """``body[key]`` as true or false (absent: false); a sentence when it is not a boolean."""
    return FLAG.check(body.get(key, FLAG.default), f"'{key}'", json.dumps)


def settings_field(body: dict, key: str) -> dict:
    """``body[key]`` as a JSON object of settings; a sentence when it is not one."""
    return SETTINGS.check(body.get(key), f"'{key}'", json.dumps)


def query_flag(request: Request, key: str) -> bool:
    """``?key=`` as true (1, true, yes) or false (0, false, no, absent); ApiError (400) otherwise."""
    value = request.query_params.get(key, "0").strip().lower()
    if value not in ("1", "true", "yes", "0", "false", "no", ""):
        raise ApiError(400, f"?{key}= takes 1 or 0, not {value!r}.")
    return value in ("1", "true", "yes")
