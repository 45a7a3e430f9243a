#!/usr/bin/env bash
# Install a one-node SLURM (Debian's slurm-wlm + munge) for the tests in tests/test_slurm_cluster.py.
# Idempotent: exits 0 at once when the binaries are already there. Runs `apt-get update` only when the
# package lists are missing or the first install attempt fails. Needs root and apt-get (Debian/Ubuntu).
# The tests skip with a clear reason when this script could not run; it never starts any daemon itself.
set -euo pipefail

need=(slurmctld slurmd sbatch scontrol squeue scancel srun munged mungekey)
version() { dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo '?'; }
missing() { for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || { echo "$b"; return 0; }; done; return 1; }

if ! m=$(missing); then
    echo "install_slurm: slurm-wlm and munge already installed (slurm-wlm $(version))"
    exit 0
fi
echo "install_slurm: '$m' not found; installing slurm-wlm and munge"

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
        echo "install_slurm: not root and no password-less sudo; cannot install" >&2; exit 1; fi
else SUDO=(); fi
command -v apt-get >/dev/null 2>&1 || { echo "install_slurm: apt-get not found (not Debian/Ubuntu)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
install() { "${SUDO[@]}" apt-get install -y --no-install-recommends slurm-wlm munge; }
# `apt-get update` only when there are no package lists yet, or when installing from the present lists fails.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    "${SUDO[@]}" apt-get update
    install
elif ! install; then
    "${SUDO[@]}" apt-get update
    install
fi

if m=$(missing); then echo "install_slurm: '$m' still missing after install" >&2; exit 1; fi
echo "install_slurm: installed (slurm-wlm $(version))"
