from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from scratch_stage.core.errors import CommandError, NodeFault
from scratch_stage.host.runner import (
    COMPRESSORS,
    build_mksquashfs_argv,
    build_mount_argv,
    build_umount_argv,
    run,
)


def test_mount_argv() -> None:
    argv = build_mount_argv(["/usr/bin/mount"], "/dev/loop7", Path("/datasets/a b"))
    assert argv == [
        "/usr/bin/mount",
        "-t",
        "squashfs",
        "-o",
        "ro,nosuid,nodev",
        "/dev/loop7",
        "/datasets/a b",
    ]


def test_mount_argv_keeps_a_wrapper_command() -> None:
    argv = build_mount_argv(("/usr/bin/sudo", "-n", "/bin/mount"), Path("/i"), Path("/t"))
    assert argv[:3] == ["/usr/bin/sudo", "-n", "/bin/mount"]
    assert argv[-2:] == ["/i", "/t"]


def test_mount_options_never_allow_setuid_devices_or_writes() -> None:
    argv = build_mount_argv(["/bin/mount"], Path("/i"), Path("/t"))
    options = set(argv[argv.index("-o") + 1].split(","))
    assert {"ro", "nosuid", "nodev"} <= options
    # no "loop": mount(8) must not open a path itself (the device comes from loopdev.py)
    assert not options & {"rw", "suid", "dev", "exec", "loop"}


def test_umount_argv() -> None:
    assert build_umount_argv(["/usr/bin/umount"], Path("/datasets/a")) == [
        "/usr/bin/umount",
        "/datasets/a",
    ]
    assert build_umount_argv(["/usr/bin/umount"], Path("/datasets/a"), lazy=True) == [
        "/usr/bin/umount",
        "-l",
        "/datasets/a",
    ]


@pytest.mark.parametrize(
    ("compression", "flags"),
    [
        ("fast", ["-comp", "lz4"]),
        ("balanced", ["-comp", "zstd", "-Xcompression-level", "6"]),
        ("small", ["-comp", "xz"]),
        ("lzo", ["-comp", "lzo"]),
    ],
)
def test_mksquashfs_argv(compression: str, flags: list[str]) -> None:
    argv = build_mksquashfs_argv(
        ["/usr/bin/mksquashfs"], Path("/src"), Path("/d/x.sqfs"), compression
    )
    assert argv[:3] == ["/usr/bin/mksquashfs", "/src", "/d/x.sqfs"]
    assert argv[3 : 3 + len(flags)] == flags
    for flag in ["-noappend", "-all-root", "-no-xattrs", "-quiet", "-no-progress"]:
        assert flag in argv
    assert argv.count("-comp") == 1


def test_mksquashfs_unknown_compression() -> None:
    with pytest.raises(KeyError):
        build_mksquashfs_argv(["/usr/bin/mksquashfs"], Path("/s"), Path("/d"), "gzip-9")
    assert set(COMPRESSORS) == {"fast", "balanced", "small", "lzo"}


def test_run_true() -> None:
    assert run(["/bin/true"], timeout=10) == ""


def test_run_returns_stdout() -> None:
    assert run(["/bin/echo", "hello", "world"], timeout=10) == "hello world\n"


def test_run_false_is_a_one_line_command_error() -> None:
    with pytest.raises(CommandError) as info:
        run(["/bin/false"], timeout=10)
    message = str(info.value)
    assert message == "/bin/false: exit status 1"
    assert isinstance(info.value, NodeFault)


def test_run_failure_reports_stderr_on_one_line() -> None:
    script = "echo progress; echo 'first problem' >&2; echo 'mount: wrong fs type' >&2; exit 32"
    with pytest.raises(CommandError) as info:
        run(["/bin/sh", "-c", script], timeout=10)
    message = str(info.value)
    assert "\n" not in message
    assert "mount: wrong fs type" in message
    assert message.startswith("/bin/sh -c ")


def test_run_failure_without_stderr_uses_stdout() -> None:
    with pytest.raises(CommandError, match="only on stdout"):
        run(["/bin/sh", "-c", "echo only on stdout; exit 2"], timeout=10)


def test_run_missing_program() -> None:
    with pytest.raises(CommandError, match="command not found: /no/such/program"):
        run(["/no/such/program", "arg"], timeout=10)


def test_run_program_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(CommandError, match="not-executable"):
        run([str(script)], timeout=10)


def test_run_directory_as_program(tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        run([str(tmp_path)], timeout=10)


def test_run_timeout_kills_and_reports() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError) as info:
        run(["/bin/sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 10
    assert "timed out after 0.3s" in str(info.value)
    assert "\n" not in str(info.value)


def test_run_does_not_use_a_shell() -> None:
    # Arguments reach the program verbatim: nothing is expanded by a shell.
    out = run([sys.executable, "-c", "import sys; print(sys.argv[1])", "$(id) ; `id`"], timeout=10)
    assert out == "$(id) ; `id`\n"
