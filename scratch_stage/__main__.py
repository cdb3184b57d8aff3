"""Entry point. Prolog and epilog skip click entirely: they run on every job start."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping


def asks_for_datasets(environ: Mapping[str, str]) -> bool:
    """False only when the job surely requested nothing (no token, no SPANK value)."""
    comment = environ.get("SLURM_JOB_COMMENT", "")
    return "datasets:" in comment or bool(environ.get("SPANK_DATASETS", "").strip())


def main(argv: list[str] | None = None) -> None:
    """Run scratch-stage with ARGV (default sys.argv[1:]) and exit with its code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1 and args[0] in ("prolog", "epilog"):
        import os

        if args[0] == "prolog" and not asks_for_datasets(os.environ):
            os._exit(0)  # most jobs: nothing to mount, nothing to import
        from scratch_stage.hookmain import run_hook

        code = run_hook(args[0], None, os.environ)
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Every job start pays for this process: skip tearing down ~200 modules.
        os._exit(code)
    from scratch_stage.cli import run_cli

    sys.exit(run_cli(args))


if __name__ == "__main__":
    main()
