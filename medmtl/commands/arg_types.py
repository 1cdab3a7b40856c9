"""argparse types that check a value as it is parsed: a bad one is an argument error, at once."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def checked(convert: Callable[[str], T], accept: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse ``type`` that converts a value and refuses those outside a range.

    Args:
        convert: e.g. ``float``; a ``ValueError`` means the text is not such a value.
        accept: whether a converted value is allowed.
        expected: what is allowed, for the message (``"a fraction in [0, 1)"``).

    Returns:
        The ``type`` callable; it raises ``argparse.ArgumentTypeError`` naming the value and
        ``expected``.
    """

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text}: expected {expected}")
        return value

    return parse


#: a number in [0, 1), e.g. a sliding-window overlap
fraction = checked(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
#: a number in (0, 1), e.g. a probability threshold
probability = checked(float, lambda v: 0.0 < v < 1.0, "a probability in (0, 1)")
#: an integer >= 1 (a count: windows per pass, epochs, cases, folds, workers)
positive_int = checked(int, lambda v: v >= 1, "a positive integer")
#: a volume in millilitres, >= 0 (nan refused)
volume_ml = checked(float, lambda v: v >= 0.0, "a volume >= 0 (ml)")
#: a torch device name: cpu, cuda or cuda:N (whether this machine has it is checked when it is used)
device_name = checked(str, lambda v: bool(_DEVICE.match(v)), "a torch device such as cpu, cuda or cuda:0")
