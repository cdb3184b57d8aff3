"""The metrics text: valid for Prometheus' own parser, conventional names, escaped labels;
the file: replaced atomically, 0644, never written through a planted name."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scratch_stage.core.errors import ScratchStageError
from scratch_stage.host.metrics import (
    METRICS_FILE,
    Family,
    MetricsError,
    escape_label,
    render,
    write_metrics,
)

HOSTILE = 'a"b\\c\nd}{x="1"'


def sample_families() -> list[Family]:
    reads = Family("scratch_stage_read_bytes_total", "counter", "Bytes read.\nSecond line \\")
    reads.add(1024, dataset="imagenet", layer="cached")
    reads.add(12.5, dataset=HOSTILE, layer="slow")
    used = Family("scratch_stage_cache_used_bytes", "gauge", "Used.")
    used.add(3e12)
    return [reads, used]


def test_prometheus_parser_reads_back_every_value_and_label() -> None:
    text = render(sample_families())
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    # the parser names a counter family without its _total suffix
    reads = parsed["scratch_stage_read_bytes"]
    assert reads.type == "counter"
    assert reads.documentation == "Bytes read.\nSecond line \\"
    values = {s.labels["dataset"]: s.value for s in reads.samples}
    assert values == {"imagenet": 1024.0, HOSTILE: 12.5}
    assert [s.value for s in parsed["scratch_stage_cache_used_bytes"].samples] == [3e12]


def test_hostile_label_value_stays_inside_its_quotes() -> None:
    text = render(sample_families())
    line = next(ln for ln in text.splitlines() if "slow" in ln)
    assert line == (
        'scratch_stage_read_bytes_total{dataset="a\\"b\\\\c\\nd}{x=\\"1\\"",layer="slow"} 12.5'
    )
    assert escape_label("plain-name.v2") == "plain-name.v2"
    assert text.endswith("\n") and len(text.splitlines()) == 7  # no raw newline injected


def test_names_follow_the_conventions() -> None:
    with pytest.raises(AssertionError):
        render([Family("read_bytes", "counter", "no prefix")])
    with pytest.raises(AssertionError):
        render([Family("scratch_stage_x", "histogram", "not ours")])


def test_write_replaces_atomically_with_mode_0644(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    old_umask = os.umask(0o077)
    try:
        path = write_metrics(tmp_path, "scratch_stage_a 1\n")
    finally:
        os.umask(old_umask)
    assert path == tmp_path / METRICS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    write_metrics(tmp_path, "scratch_stage_a 2\n")
    assert path.read_text() == "scratch_stage_a 2\n"
    assert path.stat().st_ino != inode  # a new file renamed over, never rewritten in place
    assert sorted(os.listdir(tmp_path)) == [METRICS_FILE]  # no temp file left


def test_planted_symlinks_are_replaced_not_followed(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("precious\n")
    (tmp_path / METRICS_FILE).symlink_to(victim)
    (tmp_path / f".{METRICS_FILE}.{os.getpid()}.0.tmp").symlink_to(victim)
    write_metrics(tmp_path, "scratch_stage_a 1\n")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / METRICS_FILE).is_symlink()
    assert (tmp_path / METRICS_FILE).read_text() == "scratch_stage_a 1\n"


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    tmp_path.chmod(mode)
    with pytest.raises(MetricsError, match="writable by group or others"):
        write_metrics(tmp_path, "scratch_stage_a 1\n")
    assert not (tmp_path / METRICS_FILE).exists()
    assert issubclass(MetricsError, ScratchStageError)


def test_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match=re.escape(f"metrics_dir {tmp_path}/nope: No such")):
        write_metrics(tmp_path / "nope", "x\n")
