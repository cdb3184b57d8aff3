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
