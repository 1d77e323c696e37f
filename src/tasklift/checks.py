"""Parameter checks shared by the estimators, the data functions and the command line: each returns
the value (converted from text for the command line) or raises one ValueError naming the
parameter, the range and the bad value. Torch-free, so building the argument parser stays light.
"""

from __future__ import annotations

import codecs
import math
import operator
from collections.abc import Callable, Iterable

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "check_list",
    "check_layer",
    "check_alpha",
    "check_test_size",
    "check_encoding",
    "SEED_MAX",
]

#: numpy and scikit-learn take seeds in 0..2**32 - 1
SEED_MAX = 2**32 - 1


def _error(name: str, text: str) -> ValueError:
    return ValueError(f"{name} {text}" if name else text)


def check_int(value, name: str = "", *, low: int | None = None, high: int | None = None) -> int:
    """`value` (an int, or its text) as an int in [low, high]."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = int(value.strip()) if isinstance(value, str) else operator.index(value)
    except (TypeError, ValueError):
        raise _error(name, f"must be a whole number, not {value!r}") from None
    if low is not None and number < low:
        raise _error(name, f"must be at least {low}, not {number}")
    if high is not None and number > high:
        raise _error(name, f"must be at most {high}, not {number}")
    return number


def check_float(
    value, name: str = "", *, low: float | None = None, high: float | None = None, open_low=False
) -> float:
    """`value` (a real number, or its text) as a finite float in [low, high] ((low, high] with
    `open_low`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise _error(name, f"must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise _error(name, f"must be a finite number, not {value!r}")
    if low is not None and (number <= low if open_low else number < low):
        raise _error(name, f"must be {'above' if open_low else 'at least'} {low:g}, not {number:g}")
    if high is not None and number > high:
        raise _error(name, f"must be at most {high:g}, not {number:g}")
    return number


def check_choice(value, name: str = "", *, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise _error(name, f"must be one of {', '.join(choices)}; not {value!r}")
    return value


def check_bool(value, name: str = "") -> bool:
    """`value` if it is True or False (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise _error(name, f"must be True or False, not {value!r}")
    return value


def check_list(value, name: str = "", *, item: Callable, sep: str = ",") -> list:
    """A non-empty list whose items each pass `item(x, name)`; text is split at `sep`, empty
    pieces ignored ("0.5,1," is [0.5, 1.0]). Repeated items are refused."""
    items = [v for v in value.split(sep) if v.strip()] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise _error(name, f"must be a list, not {value!r}") from None
    if not items:
        raise _error(name, f"must list at least one value, not {value!r}")
    out = [item(v, name) for v in items]
    repeated = [v for i, v in enumerate(out) if v in out[:i]]
    if repeated:
        raise _error(name, f"lists {repeated[0]!r} twice; give each value once")
    return out


def check_layer(value, name: str = "layer") -> int | str:
    """ "auto" or a layer index (an int; its range is checked against the model)."""
    if isinstance(value, str) and value != "auto":
        raise _error(name, f"must be a layer index (0, 3, -1) or 'auto', not {value!r}")
    return value if value == "auto" else check_int(value, name)


def check_alpha(value, name: str = ""):
    """A ridge strength: "auto", a number >= 0, or a non-empty list of such numbers (text:
    comma-separated), returned as "auto", a float or a list of floats."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    items = value if isinstance(value, str) or hasattr(value, "__iter__") else [value]
    try:
        alphas = check_list(items, name, item=lambda v, n: check_float(v, n, low=0))
    except ValueError:
        raise _error(
            name, f"must be 'auto', a number >= 0 or a comma list of them (0,0.1,1); not {value!r}"
        ) from None
    return alphas[0] if len(alphas) == 1 else alphas


def check_test_size(value, name: str = "") -> float | int:
    """A held-out share: a fraction in (0, 1), or a whole count >= 1 (text "0.2" or "100")."""
    number = check_float(value, name, low=0, open_low=True)
    if number < 1:
        return number
    if number != int(number):
        raise _error(name, f"must be a fraction in (0, 1) or a whole count, not {value!r}")
    return int(number)


def check_encoding(value) -> str:
    """A text encoding Python knows (codecs.lookup)."""
    try:
        codecs.lookup(value)
    except (LookupError, TypeError):
        raise ValueError(f"unknown encoding {value!r}; pass e.g. utf-8 or latin-1") from None
    return value


def first_line(e: Exception) -> str:
    """An exception's first line, or its type when it says nothing: errors stay one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
