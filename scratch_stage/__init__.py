"""scratch-stage: a node-local SSD as a read-only squashfs dataset cache, driven by Slurm."""

__version__ = "0.1.0"
