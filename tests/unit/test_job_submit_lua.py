"""slurm/job_submit.lua under real Lua interpreters, against catalogs that publish.py writes.

Each case runs the script in a fresh interpreter with a stand-in for the `slurm` table
slurmctld provides (log functions and return codes, recorded), in both ways a site uses it:
loaded as job_submit.lua itself, and required as a module by a site's own job_submit.lua.
io.popen and os.execute raise inside the interpreter: the script must not start a process
in slurmctld (an error would be caught and let the job through, which the refusals here
would notice).

Debian's Slurm links Lua 5.1, RHEL's 5.4; the tests run under every one installed
(`apt install lua5.3 lua5.1`).
"""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scratch_stage.agent.publish import HEADER, GroupDatabase, expand_groups, format_catalog
from scratch_stage.host.catalog import Catalog, Fingerprint, Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "job_submit.lua"
INTERPRETERS = [name for name in ("lua5.1", "lua5.3", "lua5.4") if shutil.which(name)]
SUCCESS, ERROR = 0, -1

# A site's own job_submit.lua, as the module's header tells a site to write it.
SITE_SCRIPT = """\
package.path = "{moddir}/?.lua;" .. package.path
local scratch_stage = require("scratch_stage_submit")
scratch_stage.configure{{catalog = "{catalog}"}}

function slurm_job_submit(job_desc, part_list, submit_uid)
    if scratch_stage.job_submit(job_desc, part_list, submit_uid) ~= slurm.SUCCESS then
        return slurm.ERROR
    end
    if job_desc.partition == "forbidden" then
        slurm.log_user("%s", "site: no such partition")
        return slurm.ERROR
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    if scratch_stage.job_modify(job_desc, job_rec, part_list, modify_uid) ~= slurm.SUCCESS then
        return slurm.ERROR
    end
    return slurm.SUCCESS
end
"""

HARNESS = """\
local out = {{}}
local function record(kind)
    return function(fmt, ...) table.insert(out, kind .. "\\t" .. string.format(fmt, ...)) end
end
slurm = {{SUCCESS = 0, ERROR = -1, log_info = record("info"), log_error = record("error"),
         log_user = record("user"), log_debug = record("debug")}}
io.popen = function() error("io.popen called inside slurmctld") end
os.execute = function() error("os.execute called inside slurmctld") end
{load}
local function emit(rc, job_desc)
    table.insert(out, "rc\\t" .. tostring(rc))
    table.insert(out, "comment\\t" .. tostring(job_desc.comment))
end
{calls}
for _, line in ipairs(out) do
    io.write((string.gsub(line, "\\n", "\\\\n")), "\\n")
end
"""


def lua(value: Any) -> str:
    """A Python value as a Lua literal."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        # Slurm's spank_job_env is indexed from 0
        return "{" + ", ".join(f"[{i}] = {lua(v)}" for i, v in enumerate(value)) + "}"
    raise TypeError(value)


@dataclass
class Result:
    rc: list[int] = field(default_factory=list)
    comments: list[str | None] = field(default_factory=list)
    user: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    error: list[str] = field(default_factory=list)

    @property
    def logs(self) -> str:
        return "\n".join(self.info + self.error)


@dataclass
class Controller:
    """A Lua interpreter as slurmctld runs the script, with the catalog at CATALOG."""

    interpreter: str
    tmp: Path
    mode: str  # "standalone" or "module"

    @property
    def catalog(self) -> Path:
        return self.tmp / "catalog.txt"

    def publish(self, text: str) -> None:
        self.catalog.write_text(text)

    def load_code(self) -> str:
        if self.mode == "standalone":
            script = self.tmp / "job_submit.lua"
            text = SCRIPT.read_text()
            text = text.replace(
                'local CATALOG_PATH = "/etc/scratch-stage/catalog.txt"',
                f"local CATALOG_PATH = {lua(str(self.catalog))}",
            )
            assert str(self.catalog) in text
            script.write_text(text)
            return f"assert(dofile({lua(str(script))}) == slurm.SUCCESS)"
        moddir = self.tmp / "modules"
        moddir.mkdir(exist_ok=True)
        shutil.copy(SCRIPT, moddir / "scratch_stage_submit.lua")
        site = self.tmp / "job_submit.lua"
        site.write_text(SITE_SCRIPT.format(moddir=moddir, catalog=self.catalog))
        return f"dofile({lua(str(site))})"

    def run_lua(self, calls: str, load: str | None = None) -> Result:
        code = HARNESS.format(load=self.load_code() if load is None else load, calls=calls)
        path = self.tmp / "harness.lua"
        path.write_text(code)
        done = subprocess.run(
            [self.interpreter, str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        result = Result()
        for line in done.stdout.splitlines():
            kind, _, text = line.partition("\t")
            text = text.replace("\\n", "\n")
            if kind == "rc":
                result.rc.append(int(float(text)))
            elif kind == "comment":
                result.comments.append(None if text == "nil" else text)
            else:
                getattr(result, kind).append(text)
        assert "internal error" not in result.logs, result.logs
        return result

    def submit(self, *jobs: Mapping[str, Any], submit_uid: int = 1000) -> Result:
        calls = "\n".join(
            f"do local j = {lua(job)}; emit(slurm_job_submit(j, {{}}, {submit_uid}), j) end"
            for job in jobs
        )
        return self.run_lua(calls)

    def modify(self, job: Mapping[str, Any], job_rec: Mapping[str, Any], uid: int) -> Result:
        calls = (
            f"do local j = {lua(job)}; emit(slurm_job_modify(j, {lua(job_rec)}, {{}}, {uid}), j)"
            " end"
        )
        return self.run_lua(calls)


@pytest.fixture(params=INTERPRETERS or ["lua5.3"])
def interpreter(request: pytest.FixtureRequest) -> str:
    if not INTERPRETERS:
        pytest.skip("no Lua interpreter: apt install lua5.3 lua5.1")
    return str(request.param)


@pytest.fixture(params=["standalone", "module"])
def ctld(interpreter: str, tmp_path: Path, request: pytest.FixtureRequest) -> Controller:
    controller = Controller(interpreter, tmp_path, str(request.param))
    controller.publish(PUBLISHED)
    return controller


# --- the catalog, as publish.py writes it ---


def grent(name: str, gid: int, members: Sequence[str]) -> grp.struct_group:
    return grp.struct_group((name, "x", gid, list(members)))


def pwent(name: str, uid: int, gid: int) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/sh"))


USERS = [pwent("ann", 1001, 100), pwent("bob", 1002, 2000), pwent("cyd", 1003, 100)]
GROUPS = {"bio": grent("bio", 2000, ["ann"]), "chem": grent("chem", 2001, ["cyd", "ghost"])}


def getpwnam(name: str) -> pwd.struct_passwd:
    for user in USERS:
        if user.pw_name == name:
            return user
    raise KeyError(name)


FAKE_DB = GroupDatabase(getgrnam=GROUPS.__getitem__, getpwnam=getpwnam, getpwall=lambda: USERS)


def catalog_of(*names: str) -> Catalog:
    images = {
        n: Image(n, Path(f"/data/{n}.sqfs"), Fingerprint(4096, 0, i), 0o644, 0, 0)
        for i, n in enumerate(names)
    }
    return Catalog(images, {})


FILLER = [f"filler{i:02d}" for i in range(12)]
PUBLISHED = format_catalog(
    catalog_of("alpha", "beta.v2", "bio-data", "both", "nobody-at-all", *FILLER),
    {"bio-data": ("bio",), "both": ("bio", "chem", "missing"), "nobody-at-all": ()},
    FAKE_DB,
)


def test_the_published_catalog() -> None:
    lines = PUBLISHED.splitlines()
    assert lines[0] == HEADER
    assert "alpha\t*" in lines
    # bio: gid 2000, listed member ann (1001), bob by primary group (1002)
    assert "bio-data\tgroups=bio\tgids=2000\tuids=1001,1002" in lines
    # chem's member 'ghost' has no passwd entry; 'missing' is no group
    assert "both\tgroups=bio,chem,missing\tgids=2000,2001\tuids=1001,1002,1003" in lines
    assert "nobody-at-all\tgroups=\tgids=\tuids=" in lines


def test_expansion_with_the_real_group_database() -> None:
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    allowed = expand_groups([group, "no-such-group-here"])
    assert nobody.pw_gid in allowed.gids
    assert nobody.pw_uid in allowed.uids  # by primary group
    assert allowed.unknown_groups == ("no-such-group-here",)


# --- decisions ---


def job(
    comment: str | None = None, *, uid: int = 1001, gid: int = 100, **more: Any
) -> dict[str, Any]:
    return {"comment": comment, "user_id": uid, "group_id": gid, "user_name": "ann", **more}


def test_open_and_unknown_datasets(ctld: Controller) -> None:
    r = ctld.submit(job("run 7 datasets:alpha,beta.v2"), job("datasets:nope"), job("x"))
    assert r.rc == [SUCCESS, ERROR, SUCCESS]
    assert r.user == [
        "scratch-stage: unknown dataset 'nope' (known: alpha, beta.v2, bio-data, both, "
        "filler00, filler01, filler02, filler03, filler04, filler05, ... 7 more)"
    ]


def test_dots_belong_to_the_name_and_bad_names_are_refused(ctld: Controller) -> None:
    r = ctld.submit(job("datasets:beta"), job("datasets:../etc"), job("datasets:a,,b"))
    assert r.rc == [ERROR, ERROR, ERROR]
    assert "unknown dataset 'beta'" in r.user[0]
    assert r.user[1].startswith("scratch-stage: malformed dataset name '../etc'")
    assert "empty dataset name" in r.user[2]


@pytest.mark.parametrize(
    ("uid", "gid", "allowed"),
    [
        (1001, 100, True),  # ann: listed member of bio
        (1002, 2000, True),  # bob: bio is his primary group
        (1003, 2000, True),  # cyd's job runs with gid bio (newgrp): authenticated by munge
        (1003, 100, False),  # cyd: only chem
        (4242, 4242, False),  # nobody known
        (0, 0, True),  # root
    ],
)
def test_restricted_dataset(ctld: Controller, uid: int, gid: int, allowed: bool) -> None:
    r = ctld.submit(job("datasets:bio-data", uid=uid, gid=gid, user_name="someone"))
    assert r.rc == [SUCCESS if allowed else ERROR]
    if not allowed:
        assert r.user == [
            "scratch-stage: dataset 'bio-data' is restricted to the groups bio and user "
            "someone is in none of them"
        ]
        assert f"refused a job of uid {uid}" in r.logs


def test_restricted_to_nobody_and_several_groups(ctld: Controller) -> None:
    r = ctld.submit(
        job("datasets:nobody-at-all", uid=1002, gid=2000),
        job("datasets:both", uid=1003, gid=100),
        job("datasets:both", uid=4242, gid=4242, user_name=None),
    )
    assert r.rc == [ERROR, SUCCESS, ERROR]
    assert "restricted to the groups (nobody)" in r.user[0]
    assert "restricted to the groups bio, chem, missing and user uid 4242" in r.user[1]


def test_datasets_option_goes_into_the_comment(ctld: Controller) -> None:
    r = ctld.submit(
        job(None, spank_job_env=["OTHER=1", "DATASETS=alpha,beta.v2"]),
        job("run 7 datasets:alpha", spank_job_env=["DATASETS=alpha,beta.v2"]),
        job(None, spank_job_env=["DATASETS=nope"]),
    )
    assert r.rc == [SUCCESS, SUCCESS, ERROR]
    assert r.comments[:2] == ["datasets:alpha,beta.v2", "run 7 datasets:alpha datasets:beta.v2"]


def test_at_most_32_datasets_and_five_problems_shown(ctld: Controller) -> None:
    names = ",".join(["alpha"] * 40)
    many = ",".join(f"x{i}" for i in range(40))
    r = ctld.submit(job(f"datasets:{names}"), job(f"datasets:{many}"))
    assert r.rc == [SUCCESS, ERROR]  # duplicates count once
    shown = r.user[0].split("\n")
    assert len(shown) == 6 and shown[-1] == "scratch-stage: ... and 36 more problem(s)"


def test_a_comment_update_is_checked_against_the_jobs_owner(ctld: Controller) -> None:
    rec = {"user_id": 1003, "group_id": 100, "user_name": "cyd"}
    assert ctld.modify({"comment": "datasets:bio-data"}, rec, 0).rc == [ERROR]
    assert ctld.modify({"comment": "datasets:both"}, rec, 0).rc == [SUCCESS]
    assert ctld.modify({"partition": "x"}, rec, 1003).rc == [SUCCESS]


def test_a_missing_catalog_lets_jobs_through_and_is_logged_once(ctld: Controller) -> None:
    ctld.catalog.unlink()
    r = ctld.submit(job("datasets:nope"), job("datasets:nope"))
    assert r.rc == [SUCCESS, SUCCESS]
    assert len(r.error) == 1 and "cannot read the catalog" in r.error[0]


def test_an_old_catalog_format_lets_jobs_through(ctld: Controller) -> None:
    ctld.publish("# scratch-stage catalog v1\nalpha\t*\nbio-data\tbio\n")
    r = ctld.submit(job("datasets:bio-data", uid=4242, gid=4242))
    assert r.rc == [SUCCESS]
    assert "publish it again" in r.error[0]


def test_an_internal_error_lets_the_job_through(ctld: Controller) -> None:
    code = "do local j = {comment = {}}; emit(slurm_job_submit(j, {}, 1000), j) end"
    harness = HARNESS.format(load=ctld.load_code(), calls=code)
    path = ctld.tmp / "broken.lua"
    path.write_text(harness)
    done = subprocess.run([ctld.interpreter, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rc\t0" in done.stdout and "internal error, job accepted unchecked" in done.stdout


def test_required_as_a_module_it_defines_no_globals(interpreter: str, tmp_path: Path) -> None:
    ctld = Controller(interpreter, tmp_path, "module")
    ctld.publish(PUBLISHED)
    shutil.copy(SCRIPT, tmp_path / "scratch_stage_submit.lua")
    load = (
        f'package.path = "{tmp_path}/?.lua;" .. package.path\n'
        "local before = {}; for k in pairs(_G) do before[k] = true end\n"
        'local m = require("scratch_stage_submit")\n'
        "for k in pairs(_G) do assert(before[k], 'new global ' .. k) end\n"
        f"m.configure{{catalog = {lua(str(ctld.catalog))}, recheck_seconds = 0}}\n"
        "m.configure{catalog = 'relative/path'}\n"
        "slurm_job_submit = function(j, p, u) return m.job_submit(j, p, u) end\n"
    )
    calls = "do local j = {comment = 'datasets:nope'}; emit(slurm_job_submit(j, {}, 1), j) end"
    r = ctld.run_lua(calls, load=load)
    assert r.rc == [ERROR] and "unknown dataset 'nope'" in r.user[0]
    assert "configure: ignoring catalog = relative/path" in r.error[0]


def test_the_site_script_keeps_its_own_checks(interpreter: str, tmp_path: Path) -> None:
    ctld = Controller(interpreter, tmp_path, "module")
    ctld.publish(PUBLISHED)
    r = ctld.submit(
        job("datasets:alpha", partition="forbidden"), job("datasets:nope", partition="forbidden")
    )
    assert r.rc == [ERROR, ERROR]
    assert r.user == ["site: no such partition", r.user[1]]
    assert "unknown dataset 'nope'" in r.user[1]  # ours first: the site's never ran


def test_the_script_starts_no_process() -> None:
    text = SCRIPT.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for call in ("io.popen", "os.execute", "/etc/passwd", "/etc/group"):
        assert call not in code
