#!/usr/bin/env bash
# Install what tests/test_slurm.py needs on a clean Debian/Ubuntu CI machine
# (as root): Slurm (slurmctld, slurmd, client commands), MUNGE, and the
# Snakemake SLURM executor plugin (the project's `slurm` extra).  The cluster
# itself is started by the test through ci/slurm_cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge
fi
python3 -m pip install --quiet -e ".[test,slurm]"
