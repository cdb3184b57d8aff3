from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.core.errors import EXIT_LOCK_TIMEOUT, LockTimeout, NodeFault
from scratch_stage.host.catalog import Fingerprint
from scratch_stage.host.heat import HeatMemory
from scratch_stage.host.state import (
    LOCK_FILE,
    STATE_FILE,
    STATE_VERSION,
    CachedCopy,
    Copy,
    Hold,
    NodeState,
    Pin,
    StateStore,
    UnknownVersion,
    write_atomically,
)

FP = Fingerprint(1000, 1_700_000_000_000_000_000, 77)
REPO = Path(__file__).resolve().parents[2]


def sample_state() -> NodeState:
    return NodeState(
        jobs={"101": Hold(("imagenet", "coco"), "alice", 1.5)},
        pins={"imagenet": Pin(2.0), "coco": Pin(3.0, 86400.0)},
        cached={"imagenet": CachedCopy(FP, 4.0)},
        staging={"coco": Copy(4242, "123456", Fingerprint(500, 9, 8), 5.0)},
    )


class Rebuilds:
    """A rebuild callable that counts its calls and returns a marker state."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> NodeState:
        self.calls += 1
        return NodeState(jobs={"recovered": Hold(("x",), "?", 0.0)})


@pytest.fixture
def rebuild() -> Rebuilds:
    return Rebuilds()


@pytest.fixture
def store(tmp_path: Path, rebuild: Rebuilds) -> StateStore:
    return StateStore(tmp_path / "state", lock_timeout=5, rebuild=rebuild)


def stored(store: StateStore) -> dict[str, object]:
    data: dict[str, object] = json.loads(Path(store.path).read_text())
    return data


# --- values --------------------------------------------------------------------------------


def test_file_without_newer_fields_still_loads() -> None:
    data = sample_state().to_json()
    del data["heat"], data["last_used"]
    assert NodeState.from_json(data) == sample_state()


def test_json_round_trip() -> None:
    state = sample_state()
    data = json.loads(json.dumps(state.to_json()))
    assert data["version"] == STATE_VERSION
    assert NodeState.from_json(data) == state


names = st.text(alphabet="abcxyz019._-", min_size=1, max_size=12)
times = st.floats(allow_nan=False, allow_infinity=False)
fingerprints = st.builds(
    Fingerprint, st.integers(0, 2**50), st.integers(0, 2**62), st.integers(0, 2**40)
)
states = st.builds(
    NodeState,
    jobs=st.dictionaries(
        st.text(min_size=1), st.builds(Hold, st.tuples(names, names), st.text(), times)
    ),
    pins=st.dictionaries(names, st.builds(Pin, times, st.none() | times)),
    cached=st.dictionaries(names, st.builds(CachedCopy, fingerprints, times)),
    staging=st.dictionaries(
        names, st.builds(Copy, st.integers(1, 2**22), st.text(), fingerprints, times)
    ),
    heat=st.builds(
        HeatMemory,
        counters=st.dictionaries(names, st.tuples(st.text(), st.integers(0, 2**63))),
        samples=st.dictionaries(
            names, st.lists(st.tuples(times, st.integers(0, 2**63))).map(tuple)
        ),
    ),
    last_used=st.dictionaries(names, times),
)


@given(states)
def test_arbitrary_states_round_trip(state: NodeState) -> None:
    assert NodeState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unknown_version(version: object) -> None:
    data = sample_state().to_json()
    data["version"] = version
    with pytest.raises(UnknownVersion):
        NodeState.from_json(data)
    assert issubclass(UnknownVersion, NodeFault)


@pytest.mark.parametrize("version", [None, "1", True, 1.0])
def test_non_integer_version_is_corruption_not_a_newer_format(version: object) -> None:
    data = sample_state().to_json()
    data["version"] = version
    with pytest.raises(ValueError):
        NodeState.from_json(data)


@pytest.mark.parametrize(
    "data",
    [
        [],
        "state",
        {"version": 1},
        {"version": 1, "jobs": [], "pins": {}, "cached": {}, "staging": {}},
        {"version": 1, "jobs": {"1": [["a"], "u"]}, "pins": {}, "cached": {}, "staging": {}},
        {"version": 1, "jobs": {"1": [["a"], "u", "x"]}, "pins": {}, "cached": {}, "staging": {}},
        {"version": 1, "jobs": {}, "pins": {}, "cached": {"a": [[1, 2], 0]}, "staging": {}},
    ],
)
def test_malformed_state(data: object) -> None:
    with pytest.raises(ValueError):
        NodeState.from_json(data)


def test_holders_are_sorted_job_ids() -> None:
    state = NodeState(
        jobs={
            "20": Hold(("a",), "u", 0),
            "3": Hold(("a", "b"), "u", 0),
            "7": Hold(("b",), "u", 0),
        }
    )
    assert state.holders("a") == ["20", "3"]
    assert state.holders("b") == ["3", "7"]
    assert state.holders("c") == []


def test_pin_expiry() -> None:
    assert Pin(0.0).active(1e12)
    assert Pin(0.0, 100.0).active(99.9)
    assert not Pin(0.0, 100.0).active(100.0)


def test_reserved_bytes_counts_cached_and_in_flight() -> None:
    state = NodeState(
        cached={
            "a": CachedCopy(Fingerprint(100, 1, 1), 0),
            "b": CachedCopy(Fingerprint(50, 1, 2), 0),
        },
        staging={"c": Copy(1, "s", Fingerprint(30, 1, 3), 0)},
    )
    assert state.reserved_bytes() == 180


def test_reserved_bytes_counts_a_recopy_and_its_stale_copy() -> None:
    # Both files are on disk until the new copy replaces the stale one (invariant 1).
    state = NodeState(
        cached={"a": CachedCopy(Fingerprint(100, 1, 1), 0)},
        staging={"a": Copy(1, "s", Fingerprint(120, 2, 2), 0)},
    )
    assert state.reserved_bytes() == 220
    assert NodeState().reserved_bytes() == 0


# --- atomic write --------------------------------------------------------------------------


def test_write_atomically(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_atomically(path, b"one")
    write_atomically(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_atomically_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.mkdir()  # os.replace of a file onto a directory fails
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_atomically(target, b"data")
    assert sorted(os.listdir(tmp_path)) == ["f.json"]
    assert target.is_dir()


def test_write_atomically_interrupted_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_atomically_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "f.json", b"x")
    assert os.listdir(tmp_path) == []


# --- store ---------------------------------------------------------------------------------


def test_missing_file_is_rebuilt(store: StateStore, rebuild: Rebuilds) -> None:
    state = store.read()
    assert rebuild.calls == 1
    assert "recovered" in state.jobs
    assert stored(store)["jobs"] == {"recovered": [["x"], "?", 0.0]}
    assert store.read() == state
    assert rebuild.calls == 1
    assert (Path(store.statedir) / LOCK_FILE).exists()


def test_transaction_persists_changes(store: StateStore) -> None:
    with store.transaction() as state:
        state.jobs["7"] = Hold(("imagenet",), "bob", 10.0)
    with store.transaction() as state:
        assert state.jobs["7"] == Hold(("imagenet",), "bob", 10.0)
        state.pins["imagenet"] = Pin(11.0)
    assert store.read().pins == {"imagenet": Pin(11.0)}


def test_transaction_writes_only_when_changed(store: StateStore) -> None:
    with store.transaction() as state:
        state.jobs["7"] = Hold(("imagenet",), "bob", 10.0)
    before = os.stat(Path(store.path))
    time.sleep(0.01)
    with store.transaction() as state:
        assert "7" in state.jobs  # read, nothing changed
    after = os.stat(Path(store.path))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with store.transaction() as state:
        state.jobs["8"] = Hold(("coco",), "eve", 11.0)
    assert os.stat(Path(store.path)).st_ino != before.st_ino


def test_exception_in_transaction_writes_nothing(store: StateStore) -> None:
    with store.transaction() as state:
        state.jobs["1"] = Hold(("a",), "u", 0.0)
    raw = Path(store.path).read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as state:
        state.jobs.clear()
        raise RuntimeError("boom")
    assert Path(store.path).read_bytes() == raw


def test_unknown_version_is_never_overwritten(store: StateStore, rebuild: Rebuilds) -> None:
    Path(store.statedir).mkdir()
    future = json.dumps({"version": STATE_VERSION + 1, "jobs": {"1": "new format"}}).encode()
    Path(store.path).write_bytes(future)
    with pytest.raises(UnknownVersion), store.transaction() as state:
        state.jobs["2"] = Hold(("a",), "u", 0.0)
    with pytest.raises(UnknownVersion):
        store.read()
    assert Path(store.path).read_bytes() == future
    assert rebuild.calls == 0
    assert sorted(os.listdir(Path(store.statedir))) == sorted([LOCK_FILE, STATE_FILE])


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": 1, "jobs": {"1": [["a"], "u", 0.0]}, "pins"',  # truncated
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"version": 1, "jobs": 5, "pins": {}, "cached": {}, "staging": {}}',
    ],
)
def test_corrupt_state_is_rebuilt_and_kept_aside(
    store: StateStore, rebuild: Rebuilds, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    Path(store.statedir).mkdir()
    Path(store.path).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="scratch_stage.host.state"):
        state = store.read()
    assert rebuild.calls == 1
    assert "recovered" in state.jobs
    aside = [
        p for p in Path(store.statedir).iterdir() if p.name.startswith(f"{STATE_FILE}.corrupt-")
    ]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert NodeState.from_json(stored(store)) == state
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "CORRUPT" in errors[0].getMessage()
    assert aside[0].name in errors[0].getMessage()


def test_corrupt_state_in_a_transaction(store: StateStore, rebuild: Rebuilds) -> None:
    Path(store.statedir).mkdir()
    Path(store.path).write_text("{not json")
    with store.transaction() as state:
        state.jobs["5"] = Hold(("a",), "u", 0.0)
    assert rebuild.calls == 1
    assert set(NodeState.from_json(stored(store)).jobs) == {"recovered", "5"}


def test_unusable_statedir_is_a_node_fault(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = StateStore(tmp_path / "file" / "state", lock_timeout=1, rebuild=NodeState)
    with pytest.raises(NodeFault, match="statedir"), store.transaction():
        pass


def test_default_statedir_is_off_limits_in_tests(tmp_path: Path) -> None:
    from scratch_stage.host.config import Config

    config = Config(datadir=tmp_path, cachedir=tmp_path)
    store = StateStore(config.statedir, lock_timeout=1, rebuild=NodeState)
    with pytest.raises(NodeFault), store.transaction():
        pass


HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, sys
    # flock(2) on the lock file: what scratch-stage and the filelock library both take.
    f = open(sys.argv[1], "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def test_lock_timeout_when_another_process_holds_the_lock(store: StateStore) -> None:
    Path(store.statedir).mkdir(mode=0o700)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(Path(store.statedir) / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        busy = StateStore(Path(store.statedir), lock_timeout=0.3, rebuild=NodeState)
        started = time.monotonic()
        with pytest.raises(LockTimeout) as info, busy.transaction():
            pass
        assert 0.25 < time.monotonic() - started < 5
        assert info.value.exit_code == EXIT_LOCK_TIMEOUT == 5
        assert LOCK_FILE in str(info.value)
    finally:
        holder.communicate("")
    with busy.transaction() as state:  # released: works again
        state.jobs["1"] = Hold(("a",), "u", 0.0)


WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from scratch_stage.host.state import Hold, NodeState, StateStore

    statedir, job, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    store = StateStore(statedir, lock_timeout=120, rebuild=NodeState)
    while not go.exists():
        time.sleep(0.001)
    with store.transaction() as state:
        state.jobs[job] = Hold(("imagenet", "job" + job), "u" + job, float(job))
    if int(job) % 3 == 0:
        with store.transaction() as state:
            del state.jobs[job]
    """
)


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    statedir, go = tmp_path / "state", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(statedir), str(i), str(go)], env=env)
        for i in range(50)
    ]
    go.touch()
    assert [w.wait(timeout=120) for w in workers] == [0] * 50
    final = StateStore(statedir, lock_timeout=5, rebuild=NodeState).read()
    expected = {str(i) for i in range(50) if i % 3 != 0}
    assert set(final.jobs) == expected
    for job in expected:
        assert final.jobs[job] == Hold(("imagenet", "job" + job), "u" + job, float(job))
    assert final.holders("imagenet") == sorted(expected)
    assert not [p for p in statedir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "jobs": {"1": [["a"], "u", '
        + b"9" * 400
        + b']}, "pins": {}, "cached": {}, "staging": {}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"version": 1, "jobs": ' + b"[" * 100_000,
        b" " * (64 * 1024 * 1024 + 1),
    ],
    ids=["400-digit-number", "deep-nesting", "deep-unclosed", "oversized"],
)
def test_any_unparseable_state_is_set_aside_and_rebuilt(
    store: StateStore, rebuild: Rebuilds, content: bytes
) -> None:
    # Observed on main: OverflowError / RecursionError escaped and every prolog exited 3.
    Path(store.statedir).mkdir(mode=0o700)
    Path(store.path).write_bytes(content)
    with store.transaction() as state:
        assert "recovered" in state.jobs
    assert rebuild.calls == 1
    assert list(Path(store.statedir).glob("state.json.corrupt-*"))


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Observed on main: one os.write call, its count ignored: a truncated state.json.
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    target = tmp_path / "state.json"
    write_atomically(target, b"x" * 10_000)
    assert target.read_bytes() == b"x" * 10_000


def test_enospc_keeps_the_old_state_and_is_a_one_line_node_fault(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    Path(store.statedir).mkdir(mode=0o700)
    with store.transaction() as state:
        state.pins["a"] = Pin(1.0)
    before = Path(store.path).read_bytes()

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(NodeFault) as info, store.transaction() as state:
        state.pins["b"] = Pin(2.0)
    assert "no space left" in str(info.value) and "\n" not in str(info.value)
    assert Path(store.path).read_bytes() == before
    assert [p.name for p in Path(store.statedir).iterdir() if p.name.endswith(".tmp")] == []


def test_statedir_and_lock_are_private(store: StateStore) -> None:
    with store.transaction():
        pass
    assert stat.S_IMODE(Path(store.statedir).stat().st_mode) == 0o700
    assert stat.S_IMODE((Path(store.statedir) / LOCK_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(store.path).stat().st_mode) == 0o600


def test_a_loose_statedir_is_made_private(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    Path(store.statedir).mkdir(mode=0o755)
    Path(store.statedir).chmod(0o755)
    (Path(store.statedir) / LOCK_FILE).write_text("")
    with store.transaction():
        pass
    assert stat.S_IMODE(Path(store.statedir).stat().st_mode) == 0o700
    assert "made 0700" in caplog.text
