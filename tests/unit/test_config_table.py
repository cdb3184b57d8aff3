"""The one table of options: code, README, example file and environment agree."""

from __future__ import annotations

import importlib.resources
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from scratch_stage.core.records import fields, replace
from scratch_stage.host import config as config_module
from scratch_stage.host.config import (
    ENV_PREFIX,
    OPTIONS,
    REQUIRED,
    Config,
    config_as_dict,
    load_config,
    markdown_table,
    validate_config,
)

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = importlib.resources.files("scratch_stage") / "config.example.yaml"
TABLE_HEADER = "| key | meaning | default | env override |"
REGENERATE = (
    ".venv/bin/python -c "
    + "'from scratch_stage.host.config import markdown_table; print(markdown_table())'"
)

# A value for every option, each different from its default.
SAMPLE: dict[str, Any] = {
    "datadir": "/shared/datasets",
    "cachedir": "/nvme/cache",
    "mountdir": "/mnt/datasets",
    "statedir": "/var/lib/ss-test",
    "capacity": "2TiB",
    "period": "15m",
    "interval": 30,
    "node": "cn042",
    "mount_command": "/usr/bin/sudo -n /usr/bin/mount",
    "umount_command": ["/bin/umount", "--verbose"],
    "mksquashfs_command": "/opt/squashfs/bin/mksquashfs -no-progress",
    "command_timeout": "2m",
    "lock_timeout": 0,
    "prolog_stage_budget": "90s",
    "verify": "sha256",
    "chunk_size": "1MiB",
    "access": {"imagenet": ["vision", "ml"], "coco.v2": "ml"},
    "trusted_owners": {"users": ["datasteward"], "groups": ["data"]},
    "demand": {"source": "file", "path": "/shared/demand.json", "max_age": "10m"},
    "coop": {
        "enabled": True,
        "dir": "/shared/coop",
        "readers": 2,
        "lease_seconds": "2m",
        "host": "10.0.0.5",
        "port": 6881,
        "stall_seconds": 10,
        "seed_seconds": "5m",
    },
    "squeue_command": "/opt/slurm/bin/squeue",
    "sinfo_command": "/opt/slurm/bin/sinfo",
    "scontrol_command": "/opt/slurm/bin/scontrol",
    "horizon": "2h",
    "hysteresis": 0.5,
    "read_rate": "2GB",
    "copy_rate": "3GB",
    "value_function": "mysite.planning:value",
    "idle_unmount": 0,
    "metrics_dir": "/var/lib/prometheus/node-exporter",
    "prometheus_url": "http://prometheus.example:9090",
    "event_log_max_size": "100MB",
    "event_log_keep": 10,
    "bandwidth": "500MB",
    "node_features": True,
}


def readme_table() -> list[str]:
    lines = README.read_text().splitlines()
    assert TABLE_HEADER in lines, f"README has no configuration table; generate: {REGENERATE}"
    start = lines.index(TABLE_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def table_keys(rows: list[str]) -> list[str]:
    return [re.match(r"\| `([a-z_]+)` \|", row).group(1) for row in rows[2:]]  # type: ignore[union-attr]


def test_readme_table_is_generated_from_the_options() -> None:
    rows = readme_table()
    keys = table_keys(rows)
    assert not set(OPTIONS) - set(keys), f"keys missing from the README table: {REGENERATE}"
    assert not set(keys) - set(OPTIONS), "README table lists keys the code does not have"
    assert "\n".join(rows) == markdown_table(), f"README table is stale; generate: {REGENERATE}"


def test_generated_table_covers_every_option_once() -> None:
    keys = table_keys(markdown_table().splitlines())
    assert keys == [f.name for f in fields(Config) if f.name in OPTIONS]
    assert len(keys) == len(set(keys)) == len(OPTIONS)
    assert "source" not in OPTIONS  # where a config was read is no option


def example_keys() -> tuple[set[str], set[str]]:
    """The example file's active keys and the keys it shows commented out (`# node: ...`)."""
    text = EXAMPLE.read_text()
    active = set(yaml.safe_load(text))
    commented = set(re.findall(r"^# ?([a-z_]+):(?: |$)", text, flags=re.MULTILINE))
    return active, commented


def test_example_file_documents_exactly_the_options() -> None:
    active, commented = example_keys()
    assert not set(OPTIONS) - active - commented, "keys missing from config.example.yaml"
    assert not (active | commented) - set(OPTIONS), "example has keys the code does not have"
    assert set(REQUIRED) <= active


def test_env_claims_in_readme_and_example_match_the_table() -> None:
    not_overridable = {key for key, option in OPTIONS.items() if not option.env}
    assert not_overridable == {"access", "coop", "demand", "trusted_owners"}
    readme = README.read_text()
    paragraph = next(p for p in readme.split("\n\n") if "SCRATCH_STAGE_<KEY>" in p)
    named = set(re.findall(r"`([a-z_]+)`", paragraph)) & set(OPTIONS)
    assert named == not_overridable, paragraph
    line = next(ln for ln in EXAMPLE.read_text().splitlines() if "SCRATCH_STAGE_<KEY>" in ln)
    assert set(re.findall(r"[a-z_]+", line)) & set(OPTIONS) == not_overridable, line
    rows = {table_keys([*readme_table()[:2], row])[0]: row for row in readme_table()[2:]}
    for key, option in OPTIONS.items():
        assert rows[key].endswith("| yes |" if option.env else "| no |"), rows[key]


def test_sample_covers_every_option_with_non_default_values() -> None:
    assert set(SAMPLE) == set(OPTIONS)
    sample = validate_config(SAMPLE, "sample")
    defaults = Config(datadir="/", cachedir="/")
    for key in OPTIONS:
        assert getattr(sample, key) != getattr(defaults, key), key


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_show_parses_back_for_defaults_and_sample(key: str) -> None:
    option = OPTIONS[key]
    for config in (Config(datadir="/d", cachedir="/c"), validate_config(SAMPLE, "s")):
        value = getattr(config, key)
        assert option.parse(option.show(value)) == value


def env_text(shown: Any) -> str:
    if isinstance(shown, list):
        return shlex.join(shown)
    if isinstance(shown, bool):
        return str(shown).lower()
    return str(shown)


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_environment_override_of_every_key(key: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("datadir: /d\ncachedir: /c\n")
    sample = validate_config(SAMPLE, "sample")
    text = env_text(OPTIONS[key].show(getattr(sample, key)))
    loaded = load_config(str(path), {ENV_PREFIX + key.upper(): text})
    if OPTIONS[key].env:
        assert getattr(loaded, key) == getattr(sample, key)
    else:  # a mapping: the variable is ignored, not misread
        assert getattr(loaded, key) == getattr(load_config(str(path), {}), key)


def test_config_as_dict_has_every_option_and_round_trips() -> None:
    sample = validate_config(SAMPLE, "sample")
    shown = config_as_dict(sample)
    assert list(shown) == list(OPTIONS)
    assert validate_config(shown, "again") == replace(sample, source="again")


def test_defaults_of_paths_follow_the_module_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest moves them out of reach; a Config built here must see that.
    minimal = Config(datadir="/d", cachedir="/c")
    assert minimal.statedir == config_module.DEFAULT_STATEDIR != Path("/var/lib/scratch-stage")
    assert minimal.mountdir == config_module.DEFAULT_MOUNTDIR != Path("/datasets")
    monkeypatch.setattr(config_module, "DEFAULT_STATEDIR", Path("/elsewhere"))
    assert Config(datadir="/d", cachedir="/c").statedir == Path("/elsewhere")
