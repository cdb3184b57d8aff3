"""contrib/: the Prometheus rules pass promtool (check and the rule unit tests), and the
rules and the Grafana dashboard only name metrics scratch-stage writes or rules record."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scratch_stage.agent.metrics import all_families
from scratch_stage.agent.views import DatasetRow, StatusView
from scratch_stage.host.counters import Counters

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib/prometheus/scratch_stage.rules.yml"
RULE_TESTS = ROOT / "contrib/prometheus/scratch_stage.rules.test.yml"
DASHBOARD = ROOT / "contrib/grafana/scratch-stage.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
STATUS = StatusView("n", 10, 1, (DatasetRow("a", 1, "cached", True),))


def exposed() -> set[str]:
    """Every metric name a node's file holds."""
    return {f.name for f in all_families(STATUS, Counters(), 60.0)}


def recorded() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Names in a PromQL expression that are ours (metrics or recorded series)."""
    return set(re.findall(r"\b([a-z_]*:?scratch_stage_[a-z_]+(?::[a-z0-9_]+)?)", expr))


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_rules_name_only_metrics_we_write() -> None:
    known = exposed() | recorded()
    for expr in rule_exprs():
        names = metric_names(expr)
        assert names, expr
        assert names <= known, (expr, names - known)


def test_rules_cover_hit_ratio_copy_failures_rebalance_and_full_cache() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"ScratchStageCopyFailures", "ScratchStageRebalanceNotRunning",
            "ScratchStageCacheAlmostFull"} <= alerts  # fmt: skip
    assert "dataset:scratch_stage_hit_ratio:rate5m" in recorded()


def test_dashboard_is_json_and_every_expr_is_ours() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exposed() | recorded()
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    assert len(targets) >= 8 and all(p["targets"] for p in dashboard["panels"])
    for target in targets:
        names = metric_names(target["expr"])
        assert names and names <= known, (target["expr"], names - known)


@pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool missing (apt install prometheus; make setup)"
)
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tested = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True,
                            text=True, timeout=120, cwd=RULE_TESTS.parent)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool missing (apt install prometheus; make setup)"
)
def test_promtool_accepts_a_rendered_metrics_file() -> None:
    from scratch_stage.host.metrics import render

    text = render(all_families(STATUS, Counters(), 60.0))
    linted = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr


def readme_queries() -> list[str]:
    """The PromQL of the README's "Operating it" table (its last column)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Operating it", 1)[1].split("\n## ", 1)[0]
    queries = []
    for row in section.splitlines():
        if row.startswith("| ") and "scratch_stage" in row:
            cell = row.rstrip("|").rsplit("|", 1)[1]
            queries += [q for q in re.findall(r"`([^`]+)`", cell) if "scratch_stage" in q]
    return queries


def test_readme_queries_name_our_series() -> None:
    queries = readme_queries()
    assert len(queries) >= 8
    known = exposed() | recorded()
    for q in queries:
        names = metric_names(q)
        assert names and names <= known, (q, names - known)


@pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool missing (apt install prometheus; make setup)"
)
def test_readme_queries_parse(tmp_path: Path) -> None:
    alerts = {"ScratchStageCopyFailures", "ScratchStageRebalanceNotRunning"}
    rules = [{"record": f"readme:q{i}", "expr": q} for i, q in enumerate(readme_queries())
             if q not in alerts]  # fmt: skip
    path = tmp_path / "readme.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "readme", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
