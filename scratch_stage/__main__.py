"""Entry point. Prolog and epilog skip click entirely: they run on every job start."""

from __future__ import annotations

import sys

from scratch_stage.hookmain import asks_for_datasets, hook_arguments, hook_process

__all__ = ["asks_for_datasets", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run scratch-stage with ARGV (default sys.argv[1:]) and exit with its code."""
    args = sys.argv[1:] if argv is None else argv
    hook = hook_arguments(args)
    if hook is not None:
        import os

        hook_process(hook[0], hook[1], os.environ)
    from scratch_stage.cli import run_cli

    sys.exit(run_cli(args))


if __name__ == "__main__":
    main()
