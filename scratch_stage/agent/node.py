"""The node: configuration plus the paths, state store, event log and clock built from it."""

from __future__ import annotations

import os
import time
from functools import cached_property

from scratch_stage.core.layout import PARTIAL_DIR, cached_name, restricted_mount
from scratch_stage.core.records import field, record
from scratch_stage.host.catalog import Trust
from scratch_stage.host.config import Config
from scratch_stage.host.events import EventLog
from scratch_stage.host.logger import get_logger
from scratch_stage.host.state import NodeState, StateStore

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from typing import Callable

log = get_logger(__name__)


@record(slots=False)
class Node:
    """One node's scratch-stage context; ROOT is where /proc and /sys are read (tests)."""

    config: Config
    root: str = "/"
    clock: Callable[[], float] = field(default=time.time)

    @cached_property
    def mountdir(self) -> str:
        # mountinfo shows resolved paths: compare against the resolved mountdir.
        return os.path.realpath(self.config.mountdir)

    @cached_property
    def store(self) -> StateStore:
        from scratch_stage.agent.reconcile import settle

        return StateStore(
            self.config.statedir,
            lock_timeout=self.config.lock_timeout,
            rebuild=self._rebuild,
            settle=lambda state: settle(self, state),
        )

    def _rebuild(self) -> NodeState:
        from scratch_stage.agent.recovery import rebuild_state  # lazy: only without a state

        return rebuild_state(self)

    @cached_property
    def events(self) -> EventLog:
        config = self.config
        return EventLog(
            config.statedir, clock=self.clock, node=config.node,
            max_size=config.event_log_max_size, keep=config.event_log_keep,
        )  # fmt: skip

    @property
    def partial_dir(self) -> str:
        return os.path.join(self.config.cachedir, PARTIAL_DIR)

    @cached_property
    def trust(self) -> Trust:
        """Whose images root mounts: root (and this command's user), plus `trusted_owners`."""
        import grp
        import pwd

        uids = set(Trust().trusted_uids)
        gids = {0}
        for user in self.config.trusted_owners.users:
            try:
                uids.add(pwd.getpwnam(user).pw_uid)
            except KeyError:
                log.warning("trusted_owners: no user %r", user)
        for group in self.config.trusted_owners.groups:
            try:
                gids.add(grp.getgrnam(group).gr_gid)
            except KeyError:
                log.warning("trusted_owners: no group %r", group)
        return Trust(frozenset(uids), frozenset(gids))

    def mountpoint(self, name: str) -> str:
        """Where dataset NAME is mounted: <mountdir>/<name>, or for a dataset restricted by
        `access:` a directory only its groups may enter (jobs still read <mountdir>/<name>,
        a symlink to it; layout.py, docs/security.md)."""
        if name in self.config.access:
            return os.path.join(self.mountdir, restricted_mount(name))
        return os.path.join(self.mountdir, name)

    def cached_path(self, name: str) -> str:
        """Where the cached copy of NAME lives."""
        return os.path.join(self.config.cachedir, cached_name(name))

    def capacity_bytes(self) -> int:
        """The cache budget in bytes (a percentage is of the cachedir filesystem)."""
        capacity = self.config.capacity
        if not capacity.percent:
            return capacity.bytes_for(0)
        st = os.statvfs(self.config.cachedir)
        return capacity.bytes_for(st.f_blocks * st.f_frsize)
