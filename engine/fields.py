"""One way to declare and check a setting a user gives: its type, default, range, choices, label, group and help.

Each config has one table of :class:`Field` by option name (``engine.training.config.FIELDS``,
``engine.postprocess.config.FIELDS``), and :func:`config_dataclass` makes the config's frozen dataclass
from it: the table is the only place an option is declared. Both config dataclasses, the HTTP API's request
fields and the command line's arguments check their values through :meth:`Field.check`; the dashboard's
forms take their widgets' labels, groups, ranges, choices and help from the same table, and the command
line's help lists it (:meth:`Field.summary`). A value that does not fit raises
:class:`~engine.errors.UserError` with a sentence naming the setting and what it accepts.

Two coercion rules, a flag of the spec (``lenient``):

* strict (the training options, the API's flags and objects): a whole number must be an ``int``, a number
  an ``int`` or ``float``, a choice one of the words; the sentences say ``…, not <value>.``
* lenient (the post-processing options, moved by the dashboard's sliders and read from JSON presets that
  other tools write): numpy scalars are taken as numbers and ``50.0`` as the whole number 50; the
  sentences name the range in every refusal (``…between 0 and 1; got <value>.``).

Example::

    >>> Field(float, 0.6, 0.0, 1.0, lenient=True).check(np.float32(0.5), "threshold")
    0.5
    >>> Field(int, 8, 1, 1024).check(0, "batch_size")
    Traceback (most recent call last):
    UserError: batch_size must be at least 1 and at most 1024, not 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from engine.errors import UserError

_WHAT = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a JSON object"}


@dataclass(frozen=True)
class Field:
    """The spec of one setting.

    Attributes:
        kind: ``bool``, ``int``, ``float``, ``str`` or ``dict``.
        default: the value when none is given.
        low, high: the allowed range of a number, ends included (None: unbounded).
        low_open: the low end is excluded (``learning_rate`` must be above 0).
        choices: the allowed values, when the setting takes one of a few.
        lenient: accept numpy scalars and whole floats for whole numbers (see the module docstring).
        help: one sentence for the dashboard's widget: what the value does and its usual range.
        usual: (low, high, step) of the dashboard's slider when it is narrower than the allowed range.
        what: how a refusal names the accepted values, when not by the kind (``a JSON object of …``).
        label: the form's label, when not the name spaced and capitalised (see :meth:`label_of`).
        group: the form's section the option is drawn in ("" where a config's form has none).
    """

    kind: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    lenient: bool = False
    help: str = ""
    usual: tuple | None = None
    what: str = ""
    label: str = ""
    group: str = ""

    def check(self, value: Any, name: str, show: Callable[[Any], str] = repr) -> Any:
        """``value`` as this field's type, when it fits.

        Args:
            value: what the user (a form, a JSON body, a file, a command line) gave.
            name: the setting's name as the user knows it, for the sentence.
            show: how the sentence writes a refused value (``json.dumps`` for an HTTP body).
        Returns:
            ``value`` coerced to ``kind`` (an ``int`` becomes a ``float`` for a number, …).
        Raises:
            UserError: the value has the wrong type, lies outside the range or is not one of the choices.
        """
        value = self._typed(value, name, show)
        if self.kind in (int, float):
            self._in_range(value, name)
        if self.choices and value not in self.choices:
            if self.lenient:
                allowed = " or ".join(map(repr, self.choices)) if len(self.choices) == 2 else \
                    "one of " + ", ".join(map(repr, self.choices))
                raise UserError(f"{name} must be {allowed}; got {value!r}.")
            raise UserError(f"{name} {value!r} is not known: choose one of {', '.join(map(str, self.choices))}.")
        return value

    def slider(self) -> tuple:
        """(low, high, step) for the dashboard's slider: ``usual`` when given, else the allowed range."""
        if self.usual is not None:
            return self.usual
        return self.low, self.high, 1 if self.kind is int else 0.01

    def label_of(self, name: str) -> str:
        """The form's label of the option ``name``: ``label`` when given, else ``batch_size`` → "Batch size"."""
        return self.label or name.replace("_", " ").capitalize()

    def summary(self) -> str:
        """What the option takes and its default, for the command line's help: ``whole number 1–256,
        default 16``, ``cosine, plateau or none, default cosine``, ``true or false, default true``."""
        if self.choices:
            words = [str(c) for c in self.choices]
            what = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
        elif self.kind in (int, float) and self.low is not None and self.high is not None:
            low, high = (f"{int(end)}" if self.kind is int else f"{end:g}" for end in (self.low, self.high))
            what = f"number above {low} up to {high}" if self.low_open else \
                f"{'whole number' if self.kind is int else 'number'} {low}–{high}"
        else:
            what = self.what or _WHAT[self.kind]
        default = str(self.default).lower() if self.kind is bool else f"{self.default:g}" \
            if self.kind is float else str(self.default)
        return f"{what}, default {default}"

    # --- the steps of check -------------------------------------------------------------------
    def _typed(self, value: Any, name: str, show: Callable[[Any], str]) -> Any:
        kind, lenient = self.kind, self.lenient
        bools = (bool, np.bool_) if lenient else (bool,)
        if kind is bool:
            if not isinstance(value, bools):
                self._refuse_type(value, name, show)
            return bool(value)
        if kind is int:
            if lenient and isinstance(value, (float, np.floating)) and float(value).is_integer():
                value = int(value)  # JSON written by other tools may carry 50.0
            ints = (int, np.integer) if lenient else (int,)
            if isinstance(value, bools) or not isinstance(value, ints):
                self._refuse_type(value, name, show)
            return int(value)
        if kind is float:
            numbers = (int, float, np.integer, np.floating) if lenient else (int, float)
            if isinstance(value, bools) or not isinstance(value, numbers):
                self._refuse_type(value, name, show)
            return float(value)
        if not isinstance(value, kind):
            self._refuse_type(value, name, show)
        return value

    def _refuse_type(self, value: Any, name: str, show: Callable[[Any], str]) -> None:
        what = self.what or _WHAT[self.kind]
        if self.lenient:
            if self.kind in (int, float) and self.low is not None and self.high is not None:
                what += f" between {self._end(self.low)} and {self._end(self.high)}"
            raise UserError(f"{name} must be {what}; got {show(value)}.")
        raise UserError(f"{name} must be {what}, not {show(value)}.")

    def _in_range(self, value: float, name: str) -> None:
        low, high = self.low, self.high
        if self.lenient:
            if not ((low is None or low <= value) and (high is None or value <= high)):  # also catches NaN
                raise UserError(f"{name} must be between {self._end(low)} and {self._end(high)}; "
                                f"got {self._end(value)}.")
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, not {value}.")
        if (low is not None and (value < low or (self.low_open and value == low))) or \
                (high is not None and value > high):
            lower = f"greater than {low:g}" if self.low_open else f"at least {low:g}"
            raise UserError(f"{name} must be {lower} and at most {high:g}, not {value:g}.")

    def _end(self, number: float) -> str:
        """A number as the lenient sentences write it: ``{:g}`` for a number, as it is for a whole one."""
        return f"{number}" if self.kind is int else f"{number:g}"


def config_dataclass(specs: Mapping[str, Field]) -> Callable[[type], type]:
    """A class decorator that makes a frozen dataclass whose fields are ``specs``, in their order, each with
    its spec's type and default; the class body holds only methods. The order is that of ``to_dict`` and so
    of the stored JSON.

    Example::

        @config_dataclass(FIELDS)
        class TrainingConfig:
            def __post_init__(self) -> None: ...
    """
    def build(cls: type) -> type:
        cls.__annotations__ = {name: spec.kind.__name__ for name, spec in specs.items()}
        for name, spec in specs.items():
            setattr(cls, name, spec.default)
        return dataclass(frozen=True)(cls)

    return build
