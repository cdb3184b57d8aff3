"""Pure parsers and formatters for sizes, capacities and durations."""

from __future__ import annotations

import math

from scratch_stage.core.records import field, record

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "PIB": 1024**5,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _number_and_unit(text: str) -> tuple[str, str] | None:
    """('2.5', 'GiB') from ' 2.5 GiB ': digits, an optional fraction, then the rest.

    The pattern \\s*([0-9]+(?:\\.[0-9]+)?)\\s*(\\S*)\\s*, written out: the prolog parses
    sizes and durations of its configuration and must not pay for importing `re`.
    """
    text = text.strip()
    i = 0
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    if i == 0:
        return None
    if i < len(text) and text[i] == ".":
        j = i + 1
        while j < len(text) and text[j] in _DIGITS:
            j += 1
        if j == i + 1:
            return None
        i = j
    unit = text[i:].lstrip()
    if any(c.isspace() for c in unit):
        return None
    return text[:i], unit


def parse_size(text: str | int) -> int:
    """Bytes from '500GB', '2TiB', '4096' or an int; ValueError on anything else."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative size: {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"not a size: {text!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    match = _number_and_unit(text)
    unit = match[1].upper() if match else ""
    if match is None or not all(c in _LETTERS for c in match[1]) or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    # Exact decimal arithmetic: float would make '2.01MB' 2009999 bytes.
    whole, _, fraction = match[0].partition(".")
    scale = _SIZE_UNITS[unit]
    return int(whole) * scale + (int(fraction or "0") * scale) // int(10 ** len(fraction))


def parse_capacity(text: str | int) -> tuple[str, float]:
    """('percent', 80.0) for '80%', else ('bytes', n); ValueError on anything else."""
    if isinstance(text, str) and text.strip().endswith("%"):
        try:
            percent = float(text.strip()[:-1])
        except ValueError:
            raise ValueError(f"not a percentage: {text!r}") from None
        if not 0 < percent <= 100:
            raise ValueError(f"percentage out of range (0, 100]: {text!r}")
        return ("percent", percent)
    return ("bytes", float(parse_size(text)))


@record(frozen=True)
class Capacity:
    """A cache budget: AMOUNT bytes, or AMOUNT percent of the cachedir filesystem.

    UNITLESS records a bare number (`80`, not `80B`): bytes, though an administrator who
    writes `capacity: 80` usually meant 80 %, which `config check` points out.
    """

    amount: float
    percent: bool = False
    unitless: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, value: str | int) -> Capacity:
        """'80%', '500GB', '2TiB' or a number of bytes; ValueError on anything else."""
        kind, amount = parse_capacity(value)
        unitless = kind == "bytes" and (isinstance(value, int) or str(value).strip().isdigit())
        return cls(amount, kind == "percent", unitless)

    def bytes_for(self, filesystem_size: int) -> int:
        """The budget in bytes on a cachedir filesystem of FILESYSTEM_SIZE bytes."""
        if self.percent:
            return int(filesystem_size * self.amount / 100)
        return int(self.amount)

    def show(self) -> str | int:
        """The shortest spelling that parses back to this capacity: '80%', '2TiB', 80."""
        if self.percent:
            text = f"{self.amount:g}"
            return f"{text if float(text) == self.amount else repr(self.amount)}%"
        n = int(self.amount)
        if self.unitless:
            return n
        units = ("PiB", "TiB", "GiB", "MiB", "KiB", "PB", "TB", "GB", "MB", "KB", "B")
        exact = [(n // _SIZE_UNITS[u.upper()], u) for u in units if n % _SIZE_UNITS[u.upper()] == 0]
        count, unit = min(exact, key=lambda e: e[0])  # 'B' always divides
        return f"{count}{unit}"


def parse_duration(text: str | int | float) -> float:
    """Seconds from '45', '30m', '2h', '2d', '1w'; ValueError on anything else."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    elif not isinstance(text, str):
        raise ValueError(f"not a duration: {text!r} (use s, m, h, d, w)")
    else:
        match = _number_and_unit(text)
        if match is None or match[1] not in _DURATION_UNITS:
            raise ValueError(f"not a duration: {text!r} (use s, m, h, d, w)")
        seconds = float(match[0]) * _DURATION_UNITS[match[1]]
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    if seconds < 0:
        raise ValueError(f"negative duration: {text!r}")
    return seconds


def format_size(n: float) -> str:
    """Human-readable binary size: '1.5 GiB'."""
    value = float(n)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def format_signed_size(n: float) -> str:
    """A size that may be negative (a net saving), always signed: '+1.5 GiB', '-4.0 KiB'."""
    return ("-" if n < 0 else "+") + format_size(abs(n))


def format_rate(bytes_per_second: float) -> str:
    """A read rate: '1.5 MiB/s'."""
    return format_size(bytes_per_second if bytes_per_second > 0 else 0.0) + "/s"


def format_jobs(expected: float) -> str:
    """Expected queued jobs (demand): '0.37 jobs'."""
    return f"{expected if expected > 0 else 0.0:.2f} jobs"


def format_duration(seconds: float) -> str:
    """A duration for people, largest units first: '2d', '1h30m', '45s', '1.5s'."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"not a duration: {seconds!r}")
    whole = int(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
