"""Against the real thing: Debian's node_exporter serves our textfile after a scripted
workload (slow and cached reads, a copy, an eviction), and Debian's Prometheus scrapes it
with our recording and alerting rules; the recorded hit ratio comes back through its API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nodetree import BLOB_SIZE, NodeEnv
from promstack import (
    http_get,
    missing,
    node_exporter,
    prometheus,
    query,
    wait_for_query,
)
from test_metrics import parse, value
from test_rebalance import drop_caches, read_all

from scratch_stage.host.metrics import METRICS_FILE

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


def ok(done: object) -> None:
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]


def ours(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in samples.items() if k[0].startswith("scratch_stage_")}


def test_node_exporter_and_prometheus_serve_our_series_and_rules(
    node_env: NodeEnv,
    textfile_dir: Path,
    tmp_path: Path,
) -> None:
    node = node_env
    node.configure(capacity=800_000, demand={"source": "none"}, metrics_dir=str(textfile_dir))
    node.add_image("a")
    node.add_image("b")
    ok(node.cli("metrics", "--write"))  # every series at 0 before the workload
    work = tmp_path / "prom"
    work.mkdir()
    with (
        node_exporter(textfile_dir, work) as exporter,
        prometheus([exporter.removeprefix("http://")], work) as server,
    ):
        wait_for_query(server, 'scratch_stage_read_bytes_total{dataset="a"}', lambda r: len(r) == 2)

        ok(node.prolog(1, comment="datasets:a"))  # slow mount
        drop_caches()
        read_all(node.mountdir / "a")
        ok(node.cli("rebalance"))  # counts the slow reads (and may cache a: it is hot)
        ok(node.cli("prestage", "a"))
        ok(node.prolog(2, comment="datasets:a"))  # served by the cached copy
        drop_caches()
        read_all(node.mountdir / "a")
        ok(node.cli("rebalance"))
        ok(node.epilog(1))
        ok(node.epilog(2))
        ok(node.cli("purge", "a"))
        ok(node.cli("metrics", "--write"))

        written = parse((textfile_dir / METRICS_FILE).read_text())
        scraped = parse(http_get(exporter + "/metrics"))
        assert ours(scraped) == ours(written)
        assert value(scraped, "node_textfile_scrape_error") == 0
        slow = value(scraped, "scratch_stage_read_bytes_total", dataset="a", layer="slow")
        cached = value(scraped, "scratch_stage_read_bytes_total", dataset="a", layer="cached")
        assert BLOB_SIZE <= slow <= 2 * BLOB_SIZE and BLOB_SIZE <= cached <= 2 * BLOB_SIZE
        assert value(scraped, "scratch_stage_job_starts_total", dataset="a", layer="slow") == 1
        assert value(scraped, "scratch_stage_job_starts_total", dataset="a", layer="cached") == 1
        assert value(scraped, "scratch_stage_copies_finished_total", dataset="a") == 1
        assert value(scraped, "scratch_stage_evictions_total", dataset="a") == 1
        assert value(scraped, "scratch_stage_dataset_cached", dataset="a") == 0
        assert value(scraped, "scratch_stage_read_bytes_total", dataset="b", layer="slow") == 0

        wait_for_query(server, 'scratch_stage_evictions_total{dataset="a"} == 1', bool)
        # The rule is evaluated on its own 1 s schedule, not after each scrape: the first
        # ratio that is not NaN may have seen an earlier scrape (slow reads only: 0, seen
        # under load). Wait for an evaluation that began after the final reads were stored.
        stored = wait_for_query(
            server, f'scratch_stage_read_bytes_total{{dataset="a",layer="cached"}} == {cached:.0f}'
            f' and on(dataset) scratch_stage_read_bytes_total{{dataset="a",layer="slow"}}'
            f' == {slow:.0f}',
            bool,
        )  # fmt: skip
        since = float(stored[0]["value"][0])  # the query's time: both samples were in by then
        wait_for_query(
            server, 'timestamp(dataset:scratch_stage_hit_ratio:rate5m{dataset="a"})',
            lambda r: r and float(r[0]["value"][1]) >= since,
        )  # fmt: skip
        ratio = query(server, 'dataset:scratch_stage_hit_ratio:rate5m{dataset="a"}')
        assert float(ratio[0]["value"][1]) == pytest.approx(cached / (cached + slow), abs=0.02)
        assert query(server, 'up{job="node"}')[0]["value"][1] == "1"
        rules = json.loads(http_get(server + "/api/v1/rules"))["data"]["groups"]
        loaded = {r.get("name") for g in rules for r in g["rules"]}
        assert {
            "dataset:scratch_stage_hit_ratio:rate5m",
            "ScratchStageCopyFailures",
            "ScratchStageRebalanceNotRunning",
            "ScratchStageCacheAlmostFull",
        } <= loaded
        assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
