"""Small words and numbers the pages show: scores, stop reasons, ages and run durations."""
from __future__ import annotations

from storage.db import STOP_REASONS, TRAINING_STATUSES, model_datasets
from ui.readers import model_metrics

def val_dice_words(value: float | None) -> str:
    """A model's best validation Dice in words; a run that trained on every image has none."""
    return "no validation images" if value is None else f"val Dice {value:.3f}"


def stop_reason_text(reason: str | None) -> str:
    """The stop reason in words, for people (``storage.db.STOP_REASONS``); the code stays in storage and the
    CLI's JSON."""
    return STOP_REASONS.get(reason or "", reason or "")


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_duration(row: dict) -> float | None:
    """Seconds a run has trained, every part of a continued run counted: the epochs logged before its
    latest start, plus the wall time of that latest part."""
    from storage.db import parse_time, utc_now

    start = parse_time(row.get("started_at"))
    end = parse_time(row.get("finished_at")) or (parse_time(utc_now()) if row.get("status") in TRAINING_STATUSES else None)
    if not (start and end):
        return None
    earlier = sum(e.get("seconds") or 0.0 for e in model_metrics(row["id"])
                  if (logged := parse_time(e.get("logged_at"))) is not None and logged < start)
    return earlier + max(0.0, (end - start).total_seconds())


SOURCE_WORDS = {"typed": "typed in the Train form", "set": "sent with the submission (API or command line)",
                "planned": "planned for the machine it was measured on"}


def settings_from_rows(model: dict) -> list[dict] | None:
    """What a run trained with and where each setting that is not the default came from, as table rows
    (``setting``, ``value``, ``from``); None for a run queued before that was recorded."""
    import json

    if not model.get("settings_from"):
        return None
    sources, config = json.loads(model["settings_from"]), json.loads(model.get("config") or "{}")
    return [{"setting": name.replace("_", " "), "value": str(config.get(name, "")),
             "from": SOURCE_WORDS.get(source, source)} for name, source in sorted(sources.items())]


def datasets_text(row: dict) -> str:
    """The data sets a run trains on, in words: "data set `A`", or "data sets `A`, `B`" for several."""
    folders = model_datasets(row)
    listed = ", ".join(f"`{folder}`" for folder in folders) or "—"
    return f"data set{'s' if len(folders) > 1 else ''} {listed}"
