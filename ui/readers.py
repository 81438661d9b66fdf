"""Cached storage reads for the pages: each is a typed ``storage.db`` read, cached for 1.5 s per data home
(the pages poll them); ``forget_queries()`` drops them after this session wrote something."""
from __future__ import annotations

from datetime import datetime

import streamlit as st

from storage import paths

# Each reader is a storage.db read, cached for 1.5 s per data home (pages poll them): the data home is part of
# the key, so tests (and a user) that switch homes never see another home's rows.
_READ_CACHE = dict(ttl=1.5, show_spinner=False, max_entries=256)


@st.cache_data(**_READ_CACHE)
def _list_models(home: str, status: str | tuple[str, ...] | None) -> list[dict]:
    from storage import db

    return db.list_models(status)


def list_models(status: str | tuple[str, ...] | None = None) -> list[dict]:
    """Every model, newest first (``storage.db.list_models``); ``status`` keeps only runs in that status."""
    return _list_models(str(paths.data_home()), status)


@st.cache_data(**_READ_CACHE)
def _model_checkpoints(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.model_checkpoints(model_id)


def model_checkpoints(model_id: str) -> list[dict]:
    """The checkpoints in one model's folder (``storage.db.model_checkpoints``)."""
    return _model_checkpoints(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _all_checkpoints(home: str) -> list[dict]:
    from storage import db

    return db.all_checkpoints()


def all_checkpoints() -> list[dict]:
    """The checkpoints of every completed model, newest model first (``storage.db.all_checkpoints``)."""
    return _all_checkpoints(str(paths.data_home()))


@st.cache_data(**_READ_CACHE)
def _model_metrics(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.model_metrics(model_id)


def model_metrics(model_id: str) -> list[dict]:
    """One model's per-epoch metrics in epoch order (``storage.db.model_metrics``)."""
    return _model_metrics(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _list_workers(home: str, max_age_s: float | None) -> list[dict]:
    from storage import db

    return db.list_workers(max_age_s)


def list_workers(max_age_s: float | None = None) -> list[dict]:
    """The workers that reported, newest first; with ``max_age_s`` only recent ones (``storage.db.list_workers``)."""
    return _list_workers(str(paths.data_home()), max_age_s)


@st.cache_data(**_READ_CACHE)
def _list_presets(home: str, model_id: str) -> list[dict]:
    from storage import db

    return db.list_presets(model_id)


def list_presets(model_id: str) -> list[dict]:
    """A model's saved post-processing presets, by name (``storage.db.list_presets``)."""
    return _list_presets(str(paths.data_home()), model_id)


@st.cache_data(**_READ_CACHE)
def _list_inference_jobs(home: str, model_id: str | None, limit: int | None) -> list[dict]:
    from storage import db

    return db.list_inference_jobs(model_id, limit)


def list_inference_jobs(model_id: str | None = None, limit: int | None = None) -> list[dict]:
    """Batch inference jobs, newest first (``storage.db.list_inference_jobs``)."""
    return _list_inference_jobs(str(paths.data_home()), model_id, limit)


@st.cache_data(**_READ_CACHE)
def _worker_heartbeat(home: str) -> datetime | None:
    from storage import db

    return db.worker_heartbeat()


def worker_heartbeat() -> datetime | None:
    """When any worker last reported on this data home (``storage.db.worker_heartbeat``)."""
    return _worker_heartbeat(str(paths.data_home()))


_READERS = (_list_models, _model_checkpoints, _all_checkpoints, _model_metrics, _list_workers, _list_presets,
            _list_inference_jobs, _worker_heartbeat)


def forget_queries() -> None:
    """Drop cached reads after this session wrote something."""
    for reader in _READERS:
        reader.clear()
