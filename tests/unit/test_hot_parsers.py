"""The prolog's parsers written without `re` accept exactly what the patterns they replace do.

Names (core/requests.py), sizes and durations (core/units.py) and mountinfo escapes
(host/mountinfo.py) are checked on every job start; each is compared here with the
regular expression it stands for, on generated text biased towards the edge cases.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from scratch_stage.core.requests import is_valid_name
from scratch_stage.core.units import _SIZE_UNITS, parse_duration, parse_size
from scratch_stage.host.mountinfo import unescape

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*")
ESCAPE_RE = re.compile(r"\\([0-7]{3})")

NAME_TEXT = st.one_of(
    st.text(alphabet="aZ09._+-/ é\n", max_size=12),
    st.integers(120, 135).map(lambda n: "a" * n),
    st.text(max_size=8),
)
UNIT_TEXT = st.builds(
    lambda a, b, c, d, e: a + b + c + d + e,
    st.sampled_from(["", " ", "\t", "\u2003"]),
    st.text(alphabet="0123456789.", min_size=0, max_size=5),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from(["", "s", "m", "h", "d", "w", "x", "GiB", "kb", "MB", "m s", "é", "1"]),
    st.sampled_from(["", " ", "\n"]),
)


@settings(max_examples=500)
@given(NAME_TEXT)
@example("a" * 128)
@example("a" * 129)
@example("..")
@example("٣")  # a non-ASCII digit: str.isdigit would say yes
def test_is_valid_name_is_the_pattern(name: str) -> None:
    expected = NAME_RE.fullmatch(name) is not None and name not in (".", "..")
    assert is_valid_name(name) == expected


def _size_by_pattern(text: str) -> int | None:
    match = SIZE_RE.fullmatch(text)
    if match is None or match.group(2).upper() not in _SIZE_UNITS:
        return None
    whole, _, fraction = match.group(1).partition(".")
    scale = _SIZE_UNITS[match.group(2).upper()]
    return int(whole) * scale + (int(fraction or "0") * scale) // int(10 ** len(fraction))


@settings(max_examples=500)
@given(UNIT_TEXT)
@example("2.01MB")
@example("5.GB")
@example(".5GB")
@example("1 0GB")
def test_parse_size_is_the_pattern(text: str) -> None:
    expected = _size_by_pattern(text)
    try:
        got: int | None = parse_size(text)
    except ValueError:
        got = None
    assert got == expected


@settings(max_examples=500)
@given(UNIT_TEXT)
@example("30m")
@example("1.5 h")
@example("2mm")
def test_parse_duration_is_the_pattern(text: str) -> None:
    match = DURATION_RE.fullmatch(text)
    expected = None
    if match is not None:
        units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
        expected = float(match.group(1)) * units[match.group(2)]
    try:
        got: float | None = parse_duration(text)
    except ValueError:
        got = None
    assert got == expected


@settings(max_examples=500)
@given(st.text(alphabet="\\0123789 a", max_size=14))
@example("/mnt/a\\040b")
@example("\\\\040")
@example("\\04")
@example("\\0401")
def test_unescape_is_the_pattern(field: str) -> None:
    assert unescape(field) == ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)
