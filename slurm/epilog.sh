#!/bin/sh
# Slurm Epilog= wrapper for scratch-stage: releases the job's dataset holds (idempotent).
# Absolute paths only: Slurm gives the epilog no PATH.
exec /opt/scratch-stage/venv/bin/scratch-stage epilog
