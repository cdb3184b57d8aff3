"""Pure parsing of /proc/self/mountinfo and the loop-device view of a mount stack."""

from __future__ import annotations

import os

from scratch_stage.core.records import record

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence
    from os import PathLike

_OCTAL = frozenset("01234567")
DELETED_SUFFIX = " (deleted)"


@record(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: str
    fstype: str
    source: str


@record(frozen=True)
class Layer:
    """One mount in the stack at a mountpoint, bottom first; BACKING is the loop's file."""

    mount_id: int
    source: str
    fstype: str
    backing: str | None

    @property
    def deleted(self) -> bool:
        return self.backing is not None and self.backing.endswith(DELETED_SUFFIX)

    @property
    def backing_path(self) -> str | None:
        if self.backing is None:
            return None
        return self.backing[: -len(DELETED_SUFFIX)] if self.deleted else self.backing


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (\\040 for a space) in a mountinfo field."""
    if "\\" not in field:
        return field  # nearly always: one C-level scan (and no `re` for the prolog)
    out: list[str] = []
    i, end = 0, len(field)
    while i < end:
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(d in _OCTAL for d in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo_line(line: str) -> MountEntry | None:
    """A MountEntry from one mountinfo line, or None if it is malformed."""
    left, sep, right = line.partition(" - ")
    head = left.split()
    tail = right.split()
    if not sep or len(head) < 6 or len(tail) < 2:
        return None
    try:
        mount_id, parent_id = int(head[0]), int(head[1])
    except ValueError:
        return None
    return MountEntry(
        mount_id, parent_id, head[2], unescape(head[3]), unescape(head[4]), head[5],
        tail[0], unescape(tail[1]),
    )  # fmt: skip


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every well-formed entry of a mountinfo text, in kernel order."""
    entries = (parse_mountinfo_line(line) for line in text.splitlines())
    return [e for e in entries if e is not None]


def stack_at(entries: Sequence[MountEntry], mount_point: str) -> list[MountEntry]:
    """The mounts stacked at MOUNT_POINT, bottom first (each child mounted on its parent)."""
    here = [e for e in entries if e.mount_point == mount_point]
    ids = {e.mount_id for e in here}
    bottoms = [e for e in here if e.parent_id not in ids]
    ordered: list[MountEntry] = []
    by_parent = {e.parent_id: e for e in here}
    current = bottoms[0] if bottoms else None
    while current is not None and current not in ordered:
        ordered.append(current)
        current = by_parent.get(current.mount_id)
    return ordered


def loop_name(source: str) -> str | None:
    """'loop3' for '/dev/loop3', else None."""
    name = source.rsplit("/", 1)[-1]
    return name if name.startswith("loop") and name[4:].isdigit() else None


def read_backing_file(sysroot: str | PathLike[str], loop: str) -> str | None:
    """The backing file of a loop device from sysfs, None if it has none."""
    try:
        with open(os.path.join(sysroot, "sys/block", loop, "loop/backing_file")) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def escape(path: str) -> str:
    """PATH as mountinfo writes it (octal escapes for space, tab, newline, backslash)."""
    for char in "\\ \t\n":
        path = path.replace(char, f"\\{ord(char):03o}")
    return path


def read_stack(root: str | PathLike[str], mount_point: str) -> list[Layer]:
    """The layers mounted at MOUNT_POINT, bottom first, read from ROOT/proc and ROOT/sys.

    Only lines naming MOUNT_POINT are parsed: with hundreds of mounts on a node, this is
    what a prolog pays under the state lock.
    """
    wanted = f" {escape(mount_point)} "
    with open(os.path.join(root, "proc/self/mountinfo")) as f:
        lines = [line for line in f if wanted in line]
    return [to_layer(root, e) for e in stack_at(parse_mountinfo("".join(lines)), mount_point)]


def read_all_stacks(root: str | PathLike[str], under: str) -> dict[str, list[Layer]]:
    """Every dataset's mount stack below the mountdir UNDER, by dataset name.

    A dataset is mounted at UNDER/<name>, or, restricted, at UNDER/.access/<name>/mnt
    (layout.py).
    """
    from scratch_stage.core.layout import dataset_of_mount

    with open(os.path.join(root, "proc/self/mountinfo")) as f:
        entries = parse_mountinfo(f.read())
    prefix = under.rstrip("/") + "/"
    points = {e.mount_point for e in entries if e.mount_point.startswith(prefix)}
    stacks: dict[str, list[Layer]] = {}
    for point in sorted(points):
        name = dataset_of_mount(point[len(prefix) :])
        if name is not None:
            stacks[name] = [to_layer(root, e) for e in stack_at(entries, point)]
    return stacks


def to_layer(root: str | PathLike[str], entry: MountEntry) -> Layer:
    """The Layer of ENTRY, its loop device resolved to the backing file."""
    loop = loop_name(entry.source)
    backing = read_backing_file(root, loop) if loop else None
    return Layer(entry.mount_id, entry.source, entry.fstype, backing)
