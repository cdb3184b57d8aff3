"""Node features: parse scontrol's view, keep the administrator's features, add ds_<name>."""

from __future__ import annotations

from pathlib import Path

from scratch_stage.agent.features import build_update_argv, parse_node_features, with_datasets

RECORDED = Path(__file__).resolve().parent.parent / "data" / "slurm-22.05"


def test_recorded_scontrol_show_node() -> None:
    text = (RECORDED / "scontrol-show-node-o-features.txt").read_text()
    assert parse_node_features(text) == (
        ["gpu", "ds_alpha", "ds_beta.v2"],
        ["gpu", "ds_alpha", "ds_beta.v2"],
    )
    assert parse_node_features("NodeName=x AvailableFeatures=(null) ActiveFeatures=(null)") == (
        [],
        [],
    )


def test_with_datasets_replaces_only_our_features() -> None:
    assert with_datasets(["gpu", "ds_old", "nvme"], ["b", "a"]) == ["gpu", "nvme", "ds_a", "ds_b"]
    assert with_datasets(["ds_old"], []) == []


def test_update_sets_both_lists_together() -> None:
    argv = build_update_argv(["/usr/bin/scontrol"], "n1", ["gpu", "ds_a"], ["ds_a"])
    assert argv == [
        "/usr/bin/scontrol", "update", "nodename=n1",
        "availablefeatures=gpu,ds_a", "activefeatures=ds_a",
    ]  # fmt: skip
    assert build_update_argv(["/s"], "n1", [], [])[-2:] == [
        "availablefeatures=",
        "activefeatures=",
    ]


# --- rate limit: slurmctld is asked when the cached set changed, or every REFRESH seconds


def fake_scontrol(tmp_path: Path) -> tuple[str, ...]:
    """An scontrol that logs each call and shows the recorded node (features gpu)."""
    script = tmp_path / "scontrol"
    show = RECORDED / "scontrol-show-node-o-features.txt"
    script.write_text(
        f'#!/bin/sh\necho "$1" >> {tmp_path}/calls\n[ "$1" = show ] && cat {show}\nexit 0\n'
    )
    script.chmod(0o755)
    return (str(script),)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().split() if path.exists() else []


def test_features_are_published_only_when_due(tmp_path: Path) -> None:
    import json as json_module

    from scratch_stage.agent.features import LAST_FILE, REFRESH, publish_features
    from scratch_stage.agent.node import Node
    from scratch_stage.host.config import Config

    (tmp_path / "state").mkdir(mode=0o700)
    now = [1000.0]
    config = Config(
        datadir=tmp_path, cachedir=tmp_path, statedir=tmp_path / "state", node="n1",
        scontrol_command=fake_scontrol(tmp_path), node_features=True,
    )  # fmt: skip
    node = Node(config, root=tmp_path, clock=lambda: now[0])

    assert publish_features(node, ["a"]) == ("ds_a",)
    assert calls(tmp_path) == ["show", "update"]
    now[0] += 60  # the next pass, same cache: nothing asked
    assert publish_features(node, ["a"]) is None
    assert calls(tmp_path) == ["show", "update"]
    now[0] += 60  # the cache changed: asked at once
    assert publish_features(node, ["a", "b"]) == ("ds_a", "ds_b")
    assert calls(tmp_path) == ["show", "update"] * 2
    now[0] += REFRESH  # the refresh: asked again (features may have been dropped)
    publish_features(node, ["a", "b"])
    assert calls(tmp_path)[4] == "show"
    last = json_module.loads((tmp_path / "state" / LAST_FILE).read_text())
    assert last == {"datasets": ["a", "b"], "at": now[0]}


def test_a_failed_publication_is_retried_next_pass(tmp_path: Path) -> None:
    from scratch_stage.agent.features import due

    assert due(None, ["a"], 0.0)
    assert not due((["a"], 100.0), ["a"], 150.0)
    assert due((["a"], 100.0), ["b"], 150.0)
    assert due((["a"], 100.0), ["a"], 50.0)  # the clock went back: ask
