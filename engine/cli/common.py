"""What several commands of ``python -m engine`` share: the user-error type, JSON files, the training plan."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.errors import UserError

EXIT_USER_ERROR = 2
PLAIN_THRESHOLD = 0.5  # the plain map's threshold without --threshold: how papers score, as earlier versions did


class CliError(UserError):
    """A problem with the command's arguments; the message is the sentence shown."""


def training_options_help() -> str:
    """The help's list of the training options ``--set`` and ``--config`` take, from their specs
    (``engine.training.config.FIELDS``), one a line under the Train form's sections:
    ``base_channels: whole number 1–256, default 16``."""
    from engine.training.config import FIELDS, GROUPS

    lines = ["training options for --set KEY=VALUE and the --config file:"]
    for group in GROUPS:
        lines.append(f"  {group}:")
        lines += [f"    {name}: {spec.summary()}" for name, spec in FIELDS.items() if spec.group == group]
    return "\n".join(lines)


def read_json(path: str, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"The {what} file {p} does not exist.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"The {what} file {p} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}).") from None
    if not isinstance(data, dict):
        raise CliError(f"The {what} file {p} must hold a JSON object.")
    return data



def data_folders(values: list[str] | str) -> list[Path]:
    """The ``--data`` folders of a training command, in order, each checked with ``load_datasets``: one
    sentence for a missing, empty or unreadable folder, a folder without vessel masks or one given twice.

    Raises:
        CliError: a folder does not exist. DatasetError: a folder is not a usable data set, or is given twice.
    """
    from engine.training.data import load_datasets

    folders = [Path(value) for value in ([values] if isinstance(values, str) else values)]
    for folder in folders:
        if not folder.is_dir():
            raise CliError(f"The data folder {folder} does not exist.")
    load_datasets(folders)
    return folders


def planned(config: Any, user_fields: set[str], data: Path | list[Path]) -> tuple[Any, Any]:
    """(config, Plan) for ``data`` (a folder or a list of them) on this machine; fields in ``user_fields`` (the keys of ``--config``
    and ``--set``) are kept. A folder with fewer than 2 images is not planned for (Plan None): training
    refuses it with a sentence.

    Raises:
        DatasetError: ``data`` is not a usable data set.
    """
    from engine.training.planner import plan_for_folder

    return plan_for_folder(config, user_fields, data)


def user_fields(args: argparse.Namespace) -> set[str]:
    """The training options the command line set: the keys of ``--config`` and of every ``--set``."""
    from engine.training.config import parse_set_option

    keys = set(read_json(args.config, "config")) if args.config else set()
    return keys | {parse_set_option(item)[0] for item in args.set or []}
