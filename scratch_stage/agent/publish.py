"""`catalog --publish`: the dataset list job_submit.lua checks submissions against.

Plain text, because Lua has no JSON parser: a header line, then one line per dataset,
tab-separated:

    alpha<TAB>*
    secret<TAB>groups=bio,chem<TAB>gids=1001,1002<TAB>uids=1000,1003

`*` is open to anyone; a restricted dataset lists its configured `access` groups and,
expanded from the group database now, their gids and the uids of their members (listed
members, and users whose primary group it is, as far as the database enumerates users).
slurmctld then needs neither a fork nor a user-database lookup per submission; the job's
gid, which munge authenticates, covers primary-group members a directory does not
enumerate. The expansion is as fresh as the file: publish again after changing a group
(the prolog checks the user's groups at job start anyway).
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from scratch_stage.host.catalog import Catalog
from scratch_stage.host.logger import get_logger
from scratch_stage.host.state import write_atomically

HEADER = "# scratch-stage catalog v2"
EXPLANATION = (
    "# name<TAB>* (anyone), or name<TAB>groups=...<TAB>gids=...<TAB>uids=... (expanded at"
    " publish time)"
)

log = get_logger(__name__)


@dataclass(frozen=True)
class GroupDatabase:
    """The lookups the expansion needs (the system's by default)."""

    getgrnam: Callable[[str], grp.struct_group] = grp.getgrnam
    getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam
    getpwall: Callable[[], list[pwd.struct_passwd]] = pwd.getpwall


@dataclass(frozen=True)
class Allowed:
    """Who may use a restricted dataset: its groups, their gids, their members' uids."""

    groups: tuple[str, ...]
    gids: tuple[int, ...]
    uids: tuple[int, ...]
    unknown_groups: tuple[str, ...]


def expand_groups(groups: Iterable[str], db: GroupDatabase | None = None) -> Allowed:
    """The gids of GROUPS and the uids of their members, from the group database."""
    db = db or GroupDatabase()
    names = tuple(groups)
    gids: set[int] = set()
    members: set[str] = set()
    unknown = []
    for name in names:
        try:
            entry = db.getgrnam(name)
        except KeyError:
            unknown.append(name)
            continue
        gids.add(entry.gr_gid)
        members.update(entry.gr_mem)
    uids = set()
    for member in members:
        try:
            uids.add(db.getpwnam(member).pw_uid)
        except KeyError:
            log.warning("group member %r has no passwd entry; skipped", member)
    if gids:
        uids.update(user.pw_uid for user in db.getpwall() if user.pw_gid in gids)
    return Allowed(names, tuple(sorted(gids)), tuple(sorted(uids)), tuple(unknown))


def _ids(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def format_catalog(
    catalog: Catalog, access: Mapping[str, tuple[str, ...]], db: GroupDatabase | None = None
) -> str:
    """The published text for CATALOG with the configured group restrictions."""
    lines = [HEADER, EXPLANATION]
    expanded: dict[tuple[str, ...], Allowed] = {}
    for name in sorted(catalog.images):
        groups = access.get(name)
        if groups is None:
            lines.append(f"{name}\t*")
            continue
        if groups not in expanded:
            expanded[groups] = expand_groups(groups, db)
        allowed = expanded[groups]
        for group in allowed.unknown_groups:
            log.warning("access: group %r of dataset %r does not exist", group, name)
        lines.append(
            f"{name}\tgroups={','.join(allowed.groups)}\tgids={_ids(allowed.gids)}"
            f"\tuids={_ids(allowed.uids)}"
        )
    return "\n".join(lines) + "\n"


def publish_catalog(
    path: Path,
    catalog: Catalog,
    access: Mapping[str, tuple[str, ...]],
    db: GroupDatabase | None = None,
) -> int:
    """Write the catalog to PATH atomically; how many datasets it lists."""
    write_atomically(path, format_catalog(catalog, access, db).encode())
    return len(catalog.images)
