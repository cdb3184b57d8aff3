#!/bin/sh
# Slurm Epilog= wrapper for scratch-stage: releases the job's dataset holds (idempotent).
# Absolute paths only: Slurm gives the epilog no PATH.
# A template: `scratch-stage install-site-files DEST` writes it with the paths of the
# installation filled in (the executable and the configuration file).
exec @SCRATCH_STAGE@ --config @CONFIG@ epilog
