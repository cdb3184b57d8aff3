from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import pytest

from scratch_stage.core.errors import EXIT_CONFIG, ConfigError
from scratch_stage.core.records import fields, replace
from scratch_stage.core.units import Capacity
from scratch_stage.host import config as config_module
from scratch_stage.host.config import (
    Config,
    config_as_dict,
    find_config_path,
    load_config,
    read_config_file,
    validate_config,
)

MINIMAL = "datadir: /shared/datasets\ncachedir: /local/cache\n"


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_lookup_order(tmp_path: Path) -> None:
    env = {"SCRATCH_STAGE_CONFIG": str(tmp_path / "env.yaml")}
    assert find_config_path("/explicit.yaml", env) == "/explicit.yaml"
    assert find_config_path(None, env) == str(tmp_path / "env.yaml")
    assert find_config_path(None, {}) == config_module.DEFAULT_PATH
    assert find_config_path(None, {"SCRATCH_STAGE_CONFIG": ""}) == config_module.DEFAULT_PATH


def test_load_prefers_explicit_then_environment(tmp_path: Path) -> None:
    explicit = write(tmp_path / "explicit.yaml", MINIMAL + "node: from-explicit\n")
    from_env = write(tmp_path / "env.yaml", MINIMAL + "node: from-env\n")
    env = {"SCRATCH_STAGE_CONFIG": str(from_env)}
    assert load_config(str(explicit), env).node == "from-explicit"
    assert load_config(None, env).node == "from-env"
    assert load_config(None, env).source == str(from_env)


def test_default_path_is_used_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = write(tmp_path / "default.yaml", MINIMAL + "node: from-default\n")
    monkeypatch.setattr(config_module, "DEFAULT_PATH", default)
    assert load_config(None, {}).node == "from-default"


def test_real_default_is_off_limits_in_tests() -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(None, {})


def test_defaults(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path / "c.yaml", MINIMAL)), {})
    assert config.datadir == "/shared/datasets"
    assert config.cachedir == "/local/cache"
    assert config.capacity == Capacity(80.0, percent=True)
    assert config.period == 600.0
    assert config.interval == 60.0
    assert config.node and "." not in config.node
    assert config.verify == "size"
    assert config.prolog_stage_budget == 0.0


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL + "capacity: 80%\nperiod: 600\n")
    env = {
        "SCRATCH_STAGE_CAPACITY": "2TiB",
        "SCRATCH_STAGE_PERIOD": "10m",
        "SCRATCH_STAGE_CACHEDIR": "/nvme/cache",
        "SCRATCH_STAGE_MOUNT_COMMAND": "/usr/bin/sudo -n /usr/bin/mount",
        "SCRATCH_STAGE_NODE": "cn042",
    }
    config = load_config(str(path), env)
    assert config.capacity == Capacity(2 * 1024**4)
    assert config.capacity.bytes_for(0) == 2 * 1024**4
    assert config.period == 600.0
    assert config.cachedir == "/nvme/cache"
    assert config.mount_command == ("/usr/bin/sudo", "-n", "/usr/bin/mount")
    assert config.node == "cn042"


def test_environment_can_supply_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "")
    env = {"SCRATCH_STAGE_DATADIR": "/d", "SCRATCH_STAGE_CACHEDIR": "/c"}
    assert load_config(str(path), env).datadir == "/d"


def test_bad_environment_override_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(ConfigError, match="capacity"):
        load_config(str(path), {"SCRATCH_STAGE_CAPACITY": "lots"})


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL)
    config = load_config(str(path), {"SCRATCH_STAGE_BOGUS": "1", "CAPACITY": "1%"})
    assert config.capacity == Capacity(80.0, percent=True)


def test_unknown_keys_rejected() -> None:
    with pytest.raises(ConfigError, match="capcity: unknown key"):
        validate_config({"datadir": "/d", "cachedir": "/c", "capcity": "80%"}, "test")


def test_required_keys() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({}, "test")
    assert "datadir: required" in str(info.value)
    assert "cachedir: required" in str(info.value)


def test_every_error_is_reported_at_once() -> None:
    raw = {
        "datadir": "relative/data",
        "mountdir": "datasets",
        "capacity": "101%",
        "period": "-5",
        "interval": 0,
        "node": "two words",
        "mount_command": "mount -t squashfs",
        "verify": "md5",
        "chunk_size": "1KiB",
        "bogus": True,
        "access": {"bad name": ["g"], "ok": [], "coco": [1]},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "/etc/x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration /etc/x.yaml: ")
    for key_path in [
        "datadir:",
        "cachedir: required",
        "mountdir:",
        "capacity:",
        "period:",
        "interval:",
        "node:",
        "mount_command:",
        "verify:",
        "chunk_size:",
        "bogus: unknown key",
        "access.bad name:",
        "access.coco:",
    ]:
        assert key_path in message, key_path
    assert info.value.exit_code == EXIT_CONFIG


@pytest.mark.parametrize("key", ["datadir", "cachedir", "mountdir", "statedir"])
@pytest.mark.parametrize("value", ["relative/dir", "./x", "~/x", "", 42])
def test_relative_paths_rejected(key: str, value: object) -> None:
    raw = {"datadir": "/d", "cachedir": "/c", key: value}
    with pytest.raises(ConfigError, match=f"{key}: must be an absolute path"):
        validate_config(raw, "test")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mount_command", ["/bin/mount"], ("/bin/mount",)),
        ("umount_command", "/bin/umount --verbose", ("/bin/umount", "--verbose")),
        ("capacity", "500GB", Capacity(500e9)),
        ("capacity", 1024, Capacity(1024)),
        ("capacity", "12.5%", Capacity(12.5, percent=True)),
        ("lock_timeout", 0, 0.0),
        ("prolog_stage_budget", "2m", 120.0),
        ("chunk_size", "4KiB", 4096),
        ("chunk_size", "1GiB", 1024**3),
        ("verify", "sha256", "sha256"),
        ("access", {"imagenet": "vision"}, {"imagenet": ("vision",)}),
    ],
)
def test_accepted_values(key: str, value: object, expected: object) -> None:
    config = validate_config({"datadir": "/d", "cachedir": "/c", key: value}, "test")
    assert getattr(config, key) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mount_command", []),
        ("mount_command", "mount"),
        ("mount_command", ["/bin/mount", 3]),
        ("mount_command", {"a": 1}),
        ("umount_command", "'unclosed"),
        ("command_timeout", 0),
        ("lock_timeout", -1),
        ("chunk_size", "2GiB"),
        ("access", ["imagenet"]),
        ("access", {"imagenet": [""]}),
        ("node", ""),
        ("period", True),
    ],
)
def test_rejected_values(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{key}"):
        validate_config({"datadir": "/d", "cachedir": "/c", key: value}, "test")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read configuration .*missing\.yaml"):
        read_config_file(tmp_path / "missing.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        read_config_file(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", b"datadir: /d\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(path)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "datadir: /d\ncachedir: /c\ncapacity: [80%\nperiod: 5\n")
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "line " in message
    assert "\n" not in message
    line = int(message.split("line ", 1)[1].split(":")[0])
    assert 3 <= line <= 5


def test_yaml_tab_indentation_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "datadir: /d\naccess:\n\timagenet: [a]\n")
    with pytest.raises(ConfigError, match=r"line 3"):
        read_config_file(path)


@pytest.mark.parametrize("text", ["- datadir\n- cachedir\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_config_file(write(tmp_path / "c.yaml", text))


def test_empty_file_means_required_keys_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "# nothing yet\n")
    assert read_config_file(path) == {}
    with pytest.raises(ConfigError, match="datadir: required"):
        load_config(str(path), {})


def test_shipped_example_loads_and_validates() -> None:
    example = importlib.resources.files("scratch_stage") / "config.example.yaml"
    with importlib.resources.as_file(example) as path:
        config = load_config(str(path), {})
    assert os.path.isabs(config.datadir)
    assert os.path.isabs(config.cachedir)
    assert config.access["imagenet"] == ("ml-users", "vision")
    # The example documents every key the product reads (node is commented out on purpose).
    text = example.read_text()
    for f in fields(Config):
        if f.name != "source":
            assert f"{f.name}:" in text, f.name


def test_config_as_dict_round_trips(tmp_path: Path) -> None:
    raw = {
        "datadir": "/d",
        "cachedir": "/c",
        "statedir": "/s",
        "capacity": "2TiB",
        "period": "10m",
        "mount_command": "/usr/bin/mount -v",
        "chunk_size": "1MiB",
        "verify": "sha256",
        "access": {"imagenet": ["a", "b"], "coco.v2": "c"},
        "node": "cn001",
    }
    config = validate_config(raw, "first")
    again = validate_config(config_as_dict(config), "second")
    assert again == replace(config, source="second")


@pytest.mark.parametrize("capacity", ["80%", "12.5%", "100%", "500GB", "3TiB", 1])
def test_config_as_dict_round_trips_capacity(capacity: object) -> None:
    config = validate_config({"datadir": "/d", "cachedir": "/c", "capacity": capacity}, "x")
    assert validate_config(config_as_dict(config), "x").capacity == config.capacity


def test_config_as_dict_is_plain_data() -> None:
    config = validate_config({"datadir": "/d", "cachedir": "/c"}, "x")
    plain = config_as_dict(config)
    assert "source" not in plain
    assert plain["datadir"] == "/d"
    assert plain["capacity"] == "80%"
    assert isinstance(plain["mount_command"], list)


# --- the parsed-configuration cache ---------------------------------------------------


def test_cache_serves_an_unchanged_file_and_never_a_changed_one(tmp_path: Path) -> None:
    from scratch_stage.host import config as config_module

    path = tmp_path / "c.yaml"
    path.write_text("datadir: /d\ncachedir: /c\ncapacity: 1GiB\n")
    first = config_module.load_config(str(path), {})
    caches = list(Path(config_module.RUNDIR).glob("config*.json"))
    assert len(caches) == 1 and "1GiB" in caches[0].read_text()
    # Doctor the cache: an unchanged file is served from it (proof the cache is used).
    caches[0].write_text(caches[0].read_text().replace("1GiB", "2GiB"))
    assert config_module.load_config(str(path), {}).capacity == Capacity(2 * 1024**3)
    # Any change of the file (here its size and times) makes the cache miss.
    path.write_text("datadir: /d\ncachedir: /c\ncapacity: 3GiB\n")
    assert config_module.load_config(str(path), {}).capacity == Capacity(3 * 1024**3)
    assert first.capacity == Capacity(1024**3)


def test_environment_overrides_apply_over_a_cached_file(tmp_path: Path) -> None:
    from scratch_stage.host import config as config_module

    path = tmp_path / "c.yaml"
    path.write_text("datadir: /d\ncachedir: /c\n")
    config_module.load_config(str(path), {})
    loaded = config_module.load_config(str(path), {"SCRATCH_STAGE_PERIOD": "30"})
    assert loaded.period == 30.0


def test_values_json_cannot_hold_exactly_are_not_cached(tmp_path: Path) -> None:
    from scratch_stage.core.errors import ConfigError
    from scratch_stage.host import config as config_module

    path = tmp_path / "c.yaml"
    path.write_text("datadir: /d\ncachedir: /c\naccess: {123: [g]}\n")
    with pytest.raises(ConfigError, match="123"):
        config_module.load_config(str(path), {})
    assert list(Path(config_module.RUNDIR).glob("config*.json")) == []
    with pytest.raises(ConfigError, match="123"):  # still an error, not "123" as a name
        config_module.load_config(str(path), {})


def test_coop_section_reports_every_bad_subkey(tmp_path: Path) -> None:
    from scratch_stage.host.config import CoopConfig, InvalidConfig, validate_config

    base = {"datadir": "/d", "cachedir": "/c"}
    assert validate_config(base, "x").coop == CoopConfig()
    good = validate_config({**base, "coop": {"enabled": True, "readers": 2}}, "x").coop
    assert good.enabled and good.readers == 2 and good.lease_seconds == 60.0
    bad = {"readers": 0, "port": 70000, "lease_seconds": -1, "host": "a b", "enabled": "maybe"}
    with pytest.raises(InvalidConfig) as e:
        validate_config({**base, "coop": bad}, "x")
    text = str(e.value)
    for key in ("readers", "port", "lease_seconds", "host", "enabled"):
        assert f"coop.{key}" in text, key
    with pytest.raises(InvalidConfig, match="unknown key"):
        validate_config({**base, "coop": {"reader": 1}}, "x")
