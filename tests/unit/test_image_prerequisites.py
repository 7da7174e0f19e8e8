"""`make image` on a machine without debootstrap: it says what to install, before doing any work."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_DOCKER = """#!/bin/sh
echo "$@" >> "{log}"
[ "$1 $2" = "image inspect" ] && exit 1  # no base image: make-base.sh must make it
exit 0
"""


@pytest.fixture
def bare_machine(tmp_path: Path) -> dict[str, Path]:
    """A PATH with the shell tools make-base.sh and make use, and a docker that records its calls, but no
    debootstrap; TMPDIR an empty folder, to see that nothing was left behind."""
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    for tool in ("bash", "sh", "env", "mktemp", "rm", "tar", "mkdir", "touch", "seq", "make"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(log=tmp_path / "docker.log"))
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    return {"bin": bin_dir, "tmp": tmp, "docker_log": tmp_path / "docker.log", "root": tmp_path}


def _env(machine: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return {**env, "PATH": str(machine["bin"]), "TMPDIR": str(machine["tmp"])}


def _says_what_to_install(stderr: str) -> None:
    assert "debootstrap not found" in stderr and "apt-get install debootstrap" in stderr, stderr
    assert "command not found" not in stderr, stderr


def test_make_base_names_debootstrap_before_any_work(bare_machine):
    done = subprocess.run([str(bare_machine["bin"] / "bash"), str(ROOT / "docker" / "make-base.sh"), "base:test"],
                          capture_output=True, text=True, env=_env(bare_machine), timeout=60, check=False)
    assert done.returncode != 0
    _says_what_to_install(done.stderr)
    assert list(bare_machine["tmp"].iterdir()) == []  # no root filesystem started
    assert not bare_machine["docker_log"].exists()  # nothing imported


def test_make_image_stops_before_the_wheelhouse(bare_machine):
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    wheelhouse = bare_machine["root"] / "wheelhouse"
    done = subprocess.run([make, "-C", str(ROOT), "image", f"WHEELHOUSE={wheelhouse}", "CPU_BASE=base:test"],
                          capture_output=True, text=True, env=_env(bare_machine), timeout=60, check=False)
    assert done.returncode != 0
    _says_what_to_install(done.stderr)
    assert not wheelhouse.exists()  # the wheelhouse, minutes of pip, was not started
    assert bare_machine["docker_log"].read_text().splitlines() == ["image inspect base:test"]
