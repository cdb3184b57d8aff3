from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.core.units import (
    format_duration,
    format_jobs,
    format_rate,
    format_signed_size,
    format_size,
    parse_capacity,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("17B", 17),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("500GB", 500 * 1000**3),
        ("2TB", 2 * 1000**4),
        ("1KiB", 1024),
        ("3MiB", 3 * 1024**2),
        ("1GiB", 1024**3),
        ("2TiB", 2 * 1024**4),
        ("1.5KiB", 1536),
        ("1.5kb", 1500),
        ("  2 GiB ", 2 * 1024**3),
        ("0.5TB", 500 * 1000**3),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_decimal_units_are_powers_of_1000_and_binary_of_1024() -> None:
    assert parse_size("1TB") < parse_size("1TiB")
    assert parse_size("1TiB") == 1024 * parse_size("1GiB")
    assert parse_size("1TB") == 1000 * parse_size("1GB")


@pytest.mark.parametrize("text", ["2.01MB", "1.001KB", "1.13GB", "0.29KB", "4.35TB"])
def test_decimal_sizes_are_exact(text: str) -> None:
    # Binary floating point would give 2009999 for 2.01MB.
    number, unit = text[:-2], text[-2:]
    whole, frac = number.split(".")
    scale = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}[unit]
    assert parse_size(text) == (int(whole + frac) * scale) // 10 ** len(frac)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["KB", "MB", "GB", "TB"]))
def test_three_decimals_of_a_decimal_unit_are_whole_bytes(thousandths: int, unit: str) -> None:
    text = f"{thousandths // 1000}.{thousandths % 1000:03d}{unit}"
    assert parse_size(text) == thousandths * parse_size("1" + unit) // 1000


@pytest.mark.parametrize(
    "text", ["", "KB", "1 K", "1XB", "1e3", "1,5KB", ".5KB", "5.KB", "-1", "-1KB", "1 2KB", "abc"]
)
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_size_ints_and_bools() -> None:
    assert parse_size(12345) == 12345
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)
    with pytest.raises(ValueError):
        parse_size(True)
    with pytest.raises(ValueError):
        parse_size(False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80%", ("percent", 80.0)),
        ("100%", ("percent", 100.0)),
        (" 12.5 %", ("percent", 12.5)),
        ("0.1%", ("percent", 0.1)),
        ("2TiB", ("bytes", float(2 * 1024**4))),
        ("500GB", ("bytes", 500e9)),
        (1000, ("bytes", 1000.0)),
    ],
)
def test_parse_capacity(text: str | int, expected: tuple[str, float]) -> None:
    assert parse_capacity(text) == expected


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "abc%", "%", "nan%", "inf%"])
def test_bad_percentages(text: str) -> None:
    with pytest.raises(ValueError, match="percent"):
        parse_capacity(text)


@pytest.mark.parametrize("value", ["lots", True, -1, "80 percent"])
def test_bad_capacities(value: object) -> None:
    with pytest.raises(ValueError):
        parse_capacity(value)  # type: ignore[arg-type]


def test_plain_number_capacity_is_bytes_not_percent() -> None:
    assert parse_capacity("80") == ("bytes", 80.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45", 45.0),
        ("45s", 45.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        (" 10 m ", 600.0),
        (0, 0.0),
        (600, 600.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "2y", "2 hours", "-5", "1e3", "2hm", "PT1H"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, True, math.nan, math.inf])
def test_bad_duration_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**4, "5.0 TiB")],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


def test_format_size_stays_in_tib_for_huge_values() -> None:
    assert format_size(3 * 1024**5) == "3072.0 TiB"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (1.5, "1.5s"), (45, "45s"), (90 * 60, "1h30m"), (172800, "2d"),
     (604800 + 3601, "1w1h1s")],
)  # fmt: skip
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown
    if shown[-1] in "smhdw" and shown[:-1].replace(".", "").isdigit():
        assert parse_duration(shown) == seconds  # one unit: it reads back


def test_format_duration_refuses_what_is_no_duration() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            format_duration(bad)


def test_signed_sizes_rates_and_jobs() -> None:
    assert format_signed_size(3.5 * 1024**3) == "+3.5 GiB"
    assert format_signed_size(-65536) == "-64.0 KiB"
    assert format_signed_size(0) == "+0 B"
    assert format_rate(1.5 * 1024**2) == "1.5 MiB/s" and format_rate(-3) == "0 B/s"
    assert format_jobs(1.254) == "1.25 jobs" and format_jobs(-0.0) == "0.00 jobs"
    assert "e+" not in format_signed_size(1e15) + format_rate(1e15)
