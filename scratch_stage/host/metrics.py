"""The Prometheus text file for node_exporter's textfile collector (docs/design.md §9).

Rendering is pure: metric families in, the text exposition format out (HELP and TYPE
lines, label values escaped, names per https://prometheus.io/docs/practices/naming:
an application prefix, base units, `_total` on counters, `_bytes`/`_seconds` suffixes).
Writing replaces `<metrics_dir>/scratch_stage.prom` atomically: a new file of a name the
collector ignores (not `*.prom`), created exclusively, fsync'd, 0644, renamed over the
old one -- a symlink or a file another user planted at either name is never written
through. A metrics_dir that is not root's, or that group or others may write, is refused:
anyone who could write there could put lying series next to ours.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host.state import not_own_directory, write_all

METRICS_FILE = "scratch_stage.prom"
PREFIX = "scratch_stage_"


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


@dataclass
class Family:
    """One metric: NAME (with PREFIX), KIND (counter or gauge), HELP text and samples."""

    name: str
    kind: str
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(Sample(labels, value))


def escape_label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def render(families: Sequence[Family]) -> str:
    """The text exposition format of FAMILIES, sorted samples, one trailing newline."""
    lines: list[str] = []
    for family in families:
        assert family.name.startswith(PREFIX) and family.kind in ("counter", "gauge")
        lines.append(f"# HELP {family.name} {escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in sorted(family.samples, key=lambda s: sorted(s.labels.items())):
            lines.append(f"{family.name}{_labels(sample.labels)} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class MetricsError(ScratchStageError):
    """The metrics file cannot be written safely."""


def check_metrics_dir(directory: str | os.PathLike[str]) -> None:
    """MetricsError unless DIRECTORY is a directory of this user that others cannot write."""
    try:
        st = os.stat(directory)
    except OSError as e:
        raise MetricsError(f"metrics_dir {directory}: {e.strerror}") from None
    problem = not_own_directory(st)
    if problem:
        raise MetricsError(f"metrics_dir {directory} {problem}: not written")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise MetricsError(
            f"metrics_dir {directory} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}): anyone could add series; not written"
        )


def write_metrics(directory: str | os.PathLike[str], text: str) -> Path:
    """Replace DIRECTORY/scratch_stage.prom by TEXT atomically (0644); its path."""
    directory = Path(directory)
    check_metrics_dir(directory)
    final = directory / METRICS_FILE
    data = text.encode()
    for attempt in range(100):
        tmp = directory / f".{METRICS_FILE}.{os.getpid()}.{attempt}.tmp"  # not *.prom
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue  # left by a dead process or planted: never written through
        except OSError as e:
            raise MetricsError(f"cannot write in metrics_dir {directory}: {e.strerror}") from None
        break
    else:
        raise MetricsError(f"metrics_dir {directory}: no free temporary name")
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise MetricsError(f"cannot write {final}: {e.strerror}") from None
    return final


def families_by_name(families: Iterable[Family]) -> dict[str, Family]:
    return {f.name: f for f in families}
