"""The files a site installs: systemd units, the slurm.conf snippet, plugstack.conf, LICENSE.

The units make loop mounts that the node's jobs must see. systemd.exec(5) gives a service
its own mount namespace for a long list of sandboxing settings ("these settings disconnect
propagation of mounts from the unit's processes to the host"); with any of them the
service's mounts never reach the jobs, while its state file says they are mounted. So
every directive of a unit is classified here: known to keep the host mount namespace and
the rights a loop mount needs, or refused with the reason. A directive nobody classified
fails too, so a future hardening line has to be looked up in systemd.exec(5) first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_stage.agent.site_files import install_site_files

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "slurm" / "systemd"
# The units that mount; scratch-stage-demand.service (the publisher) mounts nothing.
SERVICES = sorted(p for p in UNITS.glob("*.service") if "demand" not in p.name)
# The files are templates (agent/site_files.py fills them in): ExecStart= and the wrappers
# start with these two.
INSTALLED_CLI = "@SCRATCH_STAGE@"
CONFIG_ARGS = ["--config", "@CONFIG@"]

# systemd.exec(5), and systemd's exec_needs_mount_namespace(): each of these sets up a
# mount namespace for the service (mounts then propagate host -> service only).
MOUNT_NAMESPACE = {
    "PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateNetwork",
    "NetworkNamespacePath", "PrivateIPC", "IPCNamespacePath", "PrivatePIDs", "PrivateBPF",
    "ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "ReadWriteDirectories", "ReadOnlyDirectories", "InaccessibleDirectories",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "MountImages",
    "ExtensionImages", "ExtensionDirectories", "MountFlags", "MountAPIVFS",
    "RootDirectory", "RootImage", "DynamicUser", "LogNamespace", "JoinsNamespaceOf",
}  # fmt: skip
# No mount namespace, but a loop mount fails under them.
BREAKS_LOOP_MOUNTS = {
    "PrivateUsers": "a user namespace: no CAP_SYS_ADMIN in the host namespace",
    "ProtectClock": "implies DeviceAllow=char-rtc, which denies every other device "
    "(/dev/loop-control, /dev/loopN)",
    "DeviceAllow": "a device allow-list: /dev/loop-control and /dev/loopN must stay open",
    "DevicePolicy": "a device allow-list: /dev/loop-control and /dev/loopN must stay open",
    "CapabilityBoundingSet": "mount and the loop ioctls need CAP_SYS_ADMIN (and reading "
    "restricted images CAP_DAC_OVERRIDE): only with a test that runs the unit",
    "SystemCallFilter": "mount(2) and the loop ioctls must stay allowed: only with a test "
    "that runs the unit",
    "RestrictFileSystems": "squashfs, the cache and datadir filesystems must stay open",
}
# Each of these is known to keep the host mount namespace and what a loop mount needs.
KNOWN_HARMLESS = {
    "Type", "ExecStart", "Restart", "RestartSec", "TimeoutStopSec", "Nice",
    "IOSchedulingClass", "NoNewPrivileges", "ProtectHostname", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
    "SystemCallArchitectures", "RestrictAddressFamilies",
}  # fmt: skip
ROOT_ONLY = {"User", "Group"}  # root (or unset): loop mounts need it


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> [(key, value)] of a systemd unit file (comments, continuations)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_problems(text: str) -> list[str]:
    """Why the unit text would hide its mounts or fail to mount; [] when fine."""
    problems = []
    for section, entries in parse_unit(text).items():
        for key, value in entries:
            if key in MOUNT_NAMESPACE:
                problems.append(f"{key}= gives the service its own mount namespace")
            elif key in BREAKS_LOOP_MOUNTS:
                problems.append(f"{key}=: {BREAKS_LOOP_MOUNTS[key]}")
            elif key in ROOT_ONLY:
                if value not in ("", "root", "0"):
                    problems.append(f"{key}={value}: loop mounts need root")
            elif section == "Service" and key not in KNOWN_HARMLESS:
                problems.append(f"{key}= is not classified: look it up in systemd.exec(5)")
    return problems


def test_there_are_units_to_check() -> None:
    assert {p.name for p in SERVICES} == {
        "scratch-stage.service",
        "scratch-stage-rebalance.service",
    }


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_unit_keeps_the_host_mount_namespace(unit: Path) -> None:
    assert unit_problems(unit.read_text()) == []


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_unit_keeps_the_hardening_that_needs_no_namespace(unit: Path) -> None:
    service = dict(parse_unit(unit.read_text())["Service"])
    for key in ("NoNewPrivileges", "RestrictSUIDSGID", "LockPersonality", "RestrictRealtime"):
        assert service.get(key) == "yes", key
    assert service["SystemCallArchitectures"] == "native"
    assert service["ExecStart"].split()[:3] == [INSTALLED_CLI, *CONFIG_ARGS]


def test_the_publisher_unit_runs_the_publisher() -> None:
    unit = parse_unit((UNITS / "scratch-stage-demand.service").read_text())
    assert unit["Service"][:2] == [
        ("Type", "oneshot"),
        ("ExecStart", f"{INSTALLED_CLI} --config @CONFIG@ demand --publish-configured"),
    ]
    timer = dict(parse_unit((UNITS / "scratch-stage-demand.timer").read_text())["Timer"])
    assert timer["OnUnitActiveSec"] == "30s"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ProtectHome=read-only", "ProtectHome= gives the service its own mount namespace"),
        ("ProtectKernelTunables=yes", "ProtectKernelTunables= gives the service its own"),
        ("ReadWritePaths=/var/lib/scratch-stage", "ReadWritePaths= gives the service"),
        ("PrivateTmp=true", "PrivateTmp= gives the service its own mount namespace"),
        ("ProtectClock=yes", "ProtectClock=: implies DeviceAllow=char-rtc"),
        ("PrivateUsers=yes", "PrivateUsers=: a user namespace"),
        ("User=scratch", "User=scratch: loop mounts need root"),
        ("CPUQuota=20%", "CPUQuota= is not classified: look it up in systemd.exec(5)"),
    ],
)
def test_the_check_refuses_what_the_issue_found(line: str, expected: str) -> None:
    # The units as shipped before the fix had ProtectHome=read-only, ProtectKernelTunables,
    # ProtectKernelModules, ProtectControlGroups and ProtectClock.
    text = (UNITS / "scratch-stage.service").read_text()
    broken = text.replace("[Service]\n", f"[Service]\n{line}\n", 1)
    problems = unit_problems(broken)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_the_parser_reads_continuations_and_comments() -> None:
    text = "# c\n[Service]\n; c\nExecStart=/bin/a \\\n  b\nPrivateTmp=\\\nyes\n"
    assert parse_unit(text) == {"Service": [("ExecStart", "/bin/a  b"), ("PrivateTmp", "yes")]}
    assert unit_problems(text) == ["PrivateTmp= gives the service its own mount namespace"]


def verify(directory: Path) -> subprocess.CompletedProcess[str]:
    units = sorted(str(p) for p in directory.iterdir())
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installed_units(tmp_path: Path, cli: Path) -> Path:
    """The units as install-site-files writes them for CLI (verify checks it is executable)."""
    out = tmp_path / "units"
    install_site_files(tmp_path / "site", executable=str(cli), config="/etc/ss/config.yaml")
    (tmp_path / "site" / "systemd").rename(out)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    cli = Path(sys.prefix) / "bin" / "scratch-stage"
    if not cli.exists():
        pytest.skip(f"{cli} is not installed (pip install -e .)")
    units = installed_units(tmp_path, cli)
    done = verify(units)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
    # The control: verify does complain about a bad value in the same files.
    service = units / "scratch-stage.service"
    service.write_text(service.read_text().replace("LockPersonality=yes", "LockPersonality=maybe"))
    done = verify(units)
    assert re.search(r"LockPersonality.*maybe|Failed to parse", done.stderr), done.stderr


# --- slurm.conf snippet, plugstack.conf, wrappers, LICENSE ---


def active_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_snippet_overrides_no_single_valued_setting_of_the_site() -> None:
    snippet = REPO / "slurm" / "slurm.conf.snippet"
    keys = [line.split("=", 1)[0] for line in active_lines(snippet)]
    # Prolog/Epilog as globs over directories that hold the site's scripts too
    assert active_lines(snippet) == ["Prolog=/etc/slurm/prolog.d/*", "Epilog=/etc/slurm/epilog.d/*"]
    for key in ("PrologFlags", "JobSubmitPlugins", "PlugStackConfig"):
        assert key not in keys
    text = snippet.read_text()
    assert "#PrologFlags=Alloc" in text and "#JobSubmitPlugins=lua" in text


def test_plugstack_names_the_plugin_without_a_path() -> None:
    lines = active_lines(REPO / "spank_config" / "plugstack.conf")
    assert lines == ["optional scratch_stage_spank.so mountdir=/datasets"]
    makefile = (REPO / "spank_config" / "Makefile").read_text()
    assert "$(PLUGINDIR)/scratch_stage_spank.so" in makefile


@pytest.mark.parametrize("hook", ["prolog", "epilog"])
def test_wrappers_use_absolute_paths(hook: str) -> None:
    lines = active_lines(REPO / "slurm" / f"{hook}.sh")
    assert lines == [f"exec {INSTALLED_CLI} --config @CONFIG@ {hook}"]


def test_license_is_mit_as_the_package_metadata_says() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} scratch-stage developers$", text, re.M)
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()
