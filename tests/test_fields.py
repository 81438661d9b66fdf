"""engine.fields: one spec per setting, one check, the sentences users read; both configs are built on it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.cli import build_parser
from engine.errors import UserError
from engine.fields import Field
from engine.postprocess import PostProcessConfig
from engine.postprocess.config import FIELDS as POSTPROCESS_FIELDS
from engine.training.config import FIELDS as TRAINING_FIELDS
from engine.training.config import TrainingConfig

STRICT = Field(int, 8, 1, 1024)
OPEN = Field(float, 3e-3, 0.0, 1.0, low_open=True)
LENIENT = Field(float, 0.6, 0.0, 1.0, lenient=True)
LENIENT_INT = Field(int, 50, 0, 100, lenient=True)


@pytest.mark.parametrize("spec, value, expected", [
    (STRICT, 8, 8), (OPEN, 1, 1.0), (LENIENT, np.float32(0.5), 0.5), (LENIENT_INT, 50.0, 50),
    (LENIENT_INT, np.int64(7), 7), (Field(bool, lenient=True), np.bool_(True), True),
])
def test_a_value_that_fits_comes_back_typed(spec, value, expected):
    checked = spec.check(value, "x")
    assert (checked, type(checked)) == (expected, type(expected))


@pytest.mark.parametrize("spec, value, sentence", [
    (STRICT, 0, "x must be at least 1 and at most 1024, not 0."),
    (STRICT, 2.0, "x must be a whole number, not 2.0."),
    (STRICT, True, "x must be a whole number, not True."),
    (STRICT, np.int64(3), "x must be a whole number, not np.int64(3)."),
    (OPEN, 0.0, "x must be greater than 0 and at most 1, not 0."),
    (OPEN, float("nan"), "x must be a finite number, not nan."),
    (LENIENT, 1.5, "x must be between 0 and 1; got 1.5."),
    (LENIENT, "0.5", "x must be a number between 0 and 1; got '0.5'."),
    (LENIENT_INT, 2.5, "x must be a whole number between 0 and 100; got 2.5."),
    (Field(str, choices=("a", "b", "c")), "d", "x 'd' is not known: choose one of a, b, c."),
    (Field(str, choices=("a", "b", "c"), lenient=True), "d", "x must be one of 'a', 'b', 'c'; got 'd'."),
    (Field(int, 8, 4, 8, choices=(4, 8), lenient=True), 6, "x must be 4 or 8; got 6."),
])
def test_a_value_that_does_not_fit_gets_its_sentence(spec, value, sentence):
    with pytest.raises(UserError) as caught:
        spec.check(value, "x")
    assert str(caught.value) == sentence


def test_an_http_body_shows_the_value_as_json():
    with pytest.raises(UserError, match=r"^'resume' must be true or false, not null\.$"):
        Field(bool).check(None, "'resume'", json.dumps)


@pytest.mark.parametrize("config, specs", [(TrainingConfig, TRAINING_FIELDS), (PostProcessConfig, POSTPROCESS_FIELDS)],
                         ids=["training", "postprocess"])
def test_every_option_has_a_spec_whose_default_is_the_config_s(config, specs):
    assert {f.name: f.default for f in dataclasses.fields(config)} == {n: s.default for n, s in specs.items()}


@pytest.mark.parametrize("text, accepted", [("0", True), ("1", True), ("0.4", True), ("1.5", False), ("-0.1", False),
                                            ("nan", False), ("half", False)])
def test_the_cli_threshold_takes_the_config_s_range(text, accepted, capsys):
    argv = ["evaluate", "--checkpoint", "c.pt", "--data", "d", "--threshold", text]
    if accepted:
        assert build_parser().parse_args(argv).threshold == float(text)
    else:
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert "argument --threshold: must be " in capsys.readouterr().err


def test_the_cli_plain_threshold_defaults_to_half():
    assert build_parser().parse_args(["evaluate", "--checkpoint", "c.pt", "--data", "d"]).threshold == 0.5


@pytest.mark.parametrize("spec, summary", [
    (STRICT, "whole number 1–1024, default 8"), (OPEN, "number above 0 up to 1, default 0.003"),
    (Field(bool, True), "true or false, default true"),
    (Field(str, "a", choices=("a", "b", "c")), "a, b or c, default a"),
])
def test_the_cli_help_summarises_a_spec(spec, summary):
    assert spec.summary() == summary


def test_every_training_option_has_a_section_of_the_train_form_and_a_label():
    from engine.training.config import GROUPS

    assert [name for name, spec in TRAINING_FIELDS.items() if spec.group not in GROUPS] == []
    assert (TRAINING_FIELDS["batch_size"].label_of("batch_size"), TRAINING_FIELDS["clahe"].label_of("clahe")) == \
        ("Batch size", "CLAHE")


@pytest.mark.parametrize("command", ["train", "submit"])
def test_the_cli_help_lists_every_training_option(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert [name for name, spec in TRAINING_FIELDS.items() if f"{name}: {spec.summary()}" not in shown] == []


@pytest.mark.parametrize("stored", [
    TrainingConfig(epochs=5, learning_rate=1e-3).to_dict(), {"epochs": 5}, {}, {"max_minutes": 2, "channel": "rgb"},
], ids=["whole", "one-key", "empty", "int-for-float"])
def test_a_stored_config_reads_back_as_from_dict_reads_it(stored):
    read = TrainingConfig.from_stored(json.loads(json.dumps(stored)))
    assert (read, read.to_dict()) == (TrainingConfig.from_dict(stored), TrainingConfig.from_dict(stored).to_dict())
    assert type(read.max_minutes) is float


@pytest.mark.parametrize("stored", [{"epochs": 5, "retired_option": 1}, [1, 2]], ids=["unknown-key", "not-a-dict"])
def test_a_stored_config_is_refused_with_from_dict_s_sentence(stored):
    with pytest.raises(UserError) as by_dict:
        TrainingConfig.from_dict(stored)
    with pytest.raises(UserError) as by_stored:
        TrainingConfig.from_stored(stored)
    assert str(by_stored.value) == str(by_dict.value)
