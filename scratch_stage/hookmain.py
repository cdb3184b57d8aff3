"""The prolog/epilog process: environment in, exit code out, every failure logged."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from scratch_stage.errors import EXIT_BUG, ScratchStageError

log = logging.getLogger("scratch_stage")


def run_hook(kind: str, config_path: str | None, environ: Mapping[str, str]) -> int:
    """Run the prolog or epilog (KIND); 0 unless the node itself is at fault."""
    from scratch_stage.logs import setup_hook_logging

    setup_hook_logging(kind)
    job_id = environ.get("SLURM_JOB_ID", "?")
    try:
        return _run(kind, config_path, environ)
    except ScratchStageError as e:
        log.error("job %s: %s failed, node fault: %s", job_id, kind, e)
        return e.exit_code
    except Exception:
        log.exception("job %s: %s failed with an internal error (a bug)", job_id, kind)
        return EXIT_BUG


def _run(kind: str, config_path: str | None, environ: Mapping[str, str]) -> int:
    from scratch_stage.hooks import Job, run_epilog, run_prolog

    job = Job.from_environ(environ)
    if kind == "prolog" and not (job.request.names or job.request.rejected):
        return 0  # the common case: a job without datasets costs no config load
    from scratch_stage.config import load_config
    from scratch_stage.node import Node

    node = Node(load_config(config_path, environ))
    return run_prolog(node, job) if kind == "prolog" else run_epilog(node, job)
