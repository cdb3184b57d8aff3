#!/bin/sh
# Slurm Prolog= wrapper for scratch-stage (see slurm.conf.snippet).
# Slurm runs it as root on the node with no PATH, so every path here is absolute; it
# discards the output, so scratch-stage logs to syslog. The job comes from the
# environment (SLURM_JOB_ID, SLURM_JOB_USER/UID/GID, SLURM_JOB_COMMENT, SPANK_DATASETS).
# Exit status: 0 unless the node itself is broken (a non-zero status drains the node).
# A template: `scratch-stage install-site-files DEST` writes it with the paths of the
# installation filled in (the executable and the configuration file).
exec @SCRATCH_STAGE@ --config @CONFIG@ prolog
