"""The prolog/epilog process: environment in, exit code out, every failure logged.

Both entry points come here: `__main__`'s fast path (which skips click) and click's
`prolog`/`epilog` commands. This module is imported on every job start, so it imports at
module level only what a job without datasets needs (nothing).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from scratch_stage.host.logger import Logger

HOOKS = ("prolog", "epilog")


def asks_for_datasets(environ: Mapping[str, str]) -> bool:
    """False only when the job surely requested nothing (no token, no SPANK value)."""
    comment = environ.get("SLURM_JOB_COMMENT", "")
    return "datasets:" in comment or bool(environ.get("SPANK_DATASETS", "").strip())


def hook_arguments(args: list[str]) -> tuple[str, str | None] | None:
    """(hook, config path) for `[--config PATH | --config=PATH] prolog|epilog`, else None."""
    config = None
    if args and args[0].startswith("--config="):
        config, args = args[0][len("--config=") :], args[1:]
    elif len(args) >= 2 and args[0] == "--config":
        config, args = args[1], args[2:]
    if len(args) == 1 and args[0] in HOOKS:
        return args[0], config
    return None


def hook_process(kind: str, config_path: str | None, environ: Mapping[str, str]) -> NoReturn:
    """Run the prolog or epilog (KIND) and end the process with its exit code."""
    if kind == "prolog" and not asks_for_datasets(environ):
        os._exit(0)  # most jobs: nothing to mount, nothing to import
    code = run_hook(kind, config_path, environ)
    sys.stdout.flush()
    sys.stderr.flush()
    # Every job start pays for this process: skip tearing down ~200 modules.
    os._exit(code)


def run_hook(kind: str, config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the prolog or epilog (KIND); 0 unless the node itself is at fault."""
    from scratch_stage.core.errors import EXIT_BUG, ScratchStageError
    from scratch_stage.host.logger import get_logger, setup_hook_logging

    setup_hook_logging(kind)
    log = get_logger("scratch_stage")
    job_id = environ.get("SLURM_JOB_ID", "?")
    try:
        return _run(kind, config_path, environ, log)
    except ScratchStageError as e:
        log.error("job %s: %s failed, node fault: %s", job_id, kind, e)
        return e.exit_code
    except Exception:
        log.exception("job %s: %s failed with an internal error (a bug)", job_id, kind)
        return EXIT_BUG


def _run(kind: str, config_path: str | None, environ: Mapping[str, str], log: Logger) -> int:
    from scratch_stage.agent.hooks import Job, run_epilog, run_prolog

    job = Job.from_environ(environ)
    if kind == "prolog" and not (job.request.names or job.request.rejected):
        return 0  # the common case: a job without datasets costs no config load
    from scratch_stage.agent.node import Node
    from scratch_stage.host.config import load_hook_config

    config, problem = load_hook_config(config_path, environ)
    if problem is not None:
        log.error(
            "job %s: %s: %s; running on the last configuration that validated "
            "(fix the file, then check it with `scratch-stage config check`)",
            job.job_id, kind, problem,
        )  # fmt: skip
    node = Node(config)
    return run_prolog(node, job) if kind == "prolog" else run_epilog(node, job)
