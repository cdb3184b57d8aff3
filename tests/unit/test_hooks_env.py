"""Job.from_environ, and the prolog/epilog paths that need no mount (bad and unknown requests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratch_stage.agent.hooks import Job, run_epilog, run_prolog
from scratch_stage.agent.node import Node
from scratch_stage.core.errors import NodeFault
from scratch_stage.host.config import Config
from scratch_stage.host.events import EVENTS_FILE
from scratch_stage.host.state import Hold

NOBODY = 65534


def env(**values: str) -> dict[str, str]:
    base = {"SLURM_JOB_ID": "1234", "SLURM_JOB_USER": "alice"}
    base.update(values)
    return base


def test_from_environ() -> None:
    job = Job.from_environ(
        env(
            SLURM_JOB_UID="1001",
            SLURM_JOB_GID="1002",
            SLURM_JOB_COMMENT="resnet run datasets:imagenet,coco",
        )
    )
    assert job.job_id == "1234"
    assert job.user == "alice"
    assert (job.uid, job.gid) == (1001, 1002)
    assert job.request.names == ("imagenet", "coco")


@pytest.mark.parametrize("job_id", [None, "", "abc", "12a", "-5", "1.5", " 12", "12\n", "²", "١٢"])
def test_missing_or_bad_job_id_is_a_node_fault(job_id: str | None) -> None:
    environ = env()
    if job_id is None:
        del environ["SLURM_JOB_ID"]
    else:
        environ["SLURM_JOB_ID"] = job_id
    with pytest.raises(NodeFault, match="SLURM_JOB_ID") as info:
        Job.from_environ(environ)
    assert "\n" not in str(info.value)


def test_uid_and_gid_default_to_nobody() -> None:
    job = Job.from_environ({"SLURM_JOB_ID": "9"})
    assert (job.uid, job.gid) == (NOBODY, NOBODY)
    assert job.user == ""
    assert job.request.names == ()


@pytest.mark.parametrize("value", ["", "abc", "-1", "1e3", "²", "٣"])
def test_non_numeric_uid_and_gid_are_nobody(value: str) -> None:
    job = Job.from_environ(env(SLURM_JOB_UID=value, SLURM_JOB_GID=value))
    assert (job.uid, job.gid) == (NOBODY, NOBODY)


def test_root_uid_is_kept() -> None:
    assert Job.from_environ(env(SLURM_JOB_UID="0")).uid == 0


def test_comment_and_spank_union() -> None:
    job = Job.from_environ(
        env(SLURM_JOB_COMMENT="datasets:imagenet,coco note", SPANK_DATASETS="coco,laion.v2")
    )
    assert job.request.names == ("imagenet", "coco", "laion.v2")


def test_spank_only() -> None:
    assert Job.from_environ(env(SPANK_DATASETS="coco")).request.names == ("coco",)


def test_bad_entries_are_kept_as_rejections() -> None:
    job = Job.from_environ(env(SLURM_JOB_COMMENT="datasets:ok,../etc", SPANK_DATASETS="$(id)"))
    assert job.request.names == ("ok",)
    assert [r.entry for r in job.request.rejected] == ["../etc", "$(id)"]


# --- prolog and epilog without mounts ------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Node:
    (tmp_path / "data").mkdir()
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("")
    config = Config(
        datadir=tmp_path / "data",
        cachedir=tmp_path / "cache",
        mountdir=tmp_path / "datasets",
        statedir=tmp_path / "state",
        mount_command=("/bin/false",),
        umount_command=("/bin/false",),
    )
    return Node(config, root=tmp_path, clock=lambda: 1000.0)


def events_of(node: Node) -> list[dict[str, object]]:
    path = node.config.statedir / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_prolog_refuses_unknown_dataset_and_exits_zero(node: Node) -> None:
    node.config.statedir.mkdir()
    job = Job.from_environ(env(SLURM_JOB_COMMENT="datasets:nosuch"))
    assert run_prolog(node, job) == 0
    refused = [e for e in events_of(node) if e["event"] == "refused"]
    assert [(e["dataset"], e["job"]) for e in refused] == [("nosuch", "1234")]
    assert "unknown dataset" in str(refused[0]["reason"])
    assert not (node.config.statedir / "state.json").exists()
    assert not node.config.mountdir.exists()


def test_prolog_logs_a_bounded_number_of_rejections(node: Node) -> None:
    node.config.statedir.mkdir()
    hostile = "datasets:" + ",".join(f"$(reboot;{i})" for i in range(1000))
    assert len(hostile) > 10_000
    job = Job.from_environ(env(SLURM_JOB_COMMENT=hostile))
    assert len(job.request.rejected) == 1000
    assert run_prolog(node, job) == 0
    refused = [e for e in events_of(node) if e["event"] == "refused"]
    assert len(refused) == 6
    assert "995 more" in str(refused[-1]["reason"])
    assert (node.config.statedir / EVENTS_FILE).stat().st_size < 4000


def test_prolog_with_no_request_does_nothing(node: Node) -> None:
    assert run_prolog(node, Job.from_environ(env())) == 0
    assert not node.config.statedir.exists()


def test_epilog_for_a_job_that_held_nothing(node: Node) -> None:
    assert run_epilog(node, Job.from_environ(env())) == 0
    assert node.store.read().jobs == {}


def test_epilog_releases_holds_idempotently(node: Node) -> None:
    with node.store.transaction() as state:
        state.jobs["1234"] = Hold(("imagenet", "coco"), "alice", 1.0)
        state.jobs["99"] = Hold(("imagenet",), "bob", 2.0)
    job = Job.from_environ(env())
    assert run_epilog(node, job) == 0
    assert run_epilog(node, job) == 0
    state = node.store.read()
    assert set(state.jobs) == {"99"}
    assert state.holders("imagenet") == ["99"]
    released = [e["dataset"] for e in events_of(node) if e["event"] == "release"]
    assert released == ["imagenet", "coco"]


def test_admin_release_drops_a_recovered_hold_and_refuses_an_unknown_job(node: Node) -> None:
    from scratch_stage.agent.admin import release
    from scratch_stage.core.errors import DatasetError
    from scratch_stage.host.state import RECOVERED

    with node.store.transaction() as state:
        state.jobs[RECOVERED] = Hold(("imagenet",), "?", 1.0)
    released = release(node, RECOVERED)
    assert (released.job_id, released.datasets) == (RECOVERED, ("imagenet",))
    state = node.store.read()
    assert state.jobs == {} and state.last_used == {"imagenet": 1000.0}
    with pytest.raises(DatasetError, match="holds nothing"):
        release(node, RECOVERED)
