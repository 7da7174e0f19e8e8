"""The GPU image, built with `make image-gpu` from a fresh clone and run on a machine without a GPU: everything
that can be proven before the engine starts on CUDA. Opt-in for its size (CHAMELEON_TEST_GPU_IMAGE=1)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from conftest import LABEL, ROOT, build_image, docker

OPT_IN = "CHAMELEON_TEST_GPU_IMAGE"
IMAGE = "chameleon-serve:gpu"
# `make image-gpu` peaked at 39 GB of disk (measured with df; the wheelhouse is 3.7 GB and the image 9 GB, and the
# legacy builder holds copies of both while it builds); the image stays until this module's teardown removes it.
BUILD_BYTES = 42 * 10**9
# A guard against a hang, far above what failing takes (making the tiny checkpoint, then importing vLLM).
NO_GPU_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(os.environ.get(OPT_IN) != "1",
                                reason=f"the GPU image's build is opt-in (42 GB of disk): set {OPT_IN}=1")

# Run as the image's entrypoint user: what the image holds and what vLLM makes of it without a GPU.
PROBE = """
import importlib.metadata, json, os, shutil
import vllm, torch, engine, server
from vllm import envs
from vllm.platforms import vllm_version_matches_substr
try:  # vLLM's compiled CUDA ops, which need the driver's libcuda: the NVIDIA container toolkit mounts it on GPU nodes
    import vllm._C_stable_libtorch
    cuda_ops = "loaded"
except ImportError as e:
    cuda_ops = str(e)
print(json.dumps({
    "torch_cuda": torch.version.cuda, "vllm": importlib.metadata.version("vllm"), "target": envs.VLLM_TARGET_DEVICE,
    "cpu_build": vllm_version_matches_substr("cpu"), "cuda_ops": cuda_ops, "uid": os.getuid(),
    "nvidia_env": {k: v for k, v in os.environ.items() if k.startswith("NVIDIA_")},
    "leftovers": [p for p in ("/wheelhouse", shutil.which("pip")) if p and os.path.exists(p)],
}))
"""
# A Python extension built as Triton builds its kernels' launcher on a GPU's first model load (the launcher itself
# links the driver's libcuda, which only a GPU machine has): the C compiler and Python's headers are in place.
COMPILE = """
from triton.runtime.build import compile_module_from_src
print(compile_module_from_src('''#include <Python.h>
static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "launcher_probe", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_launcher_probe(void) { return PyModule_Create(&m); }''', "launcher_probe").__name__)
"""


@pytest.fixture(scope="module")
def gpu_image(docker_daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from build_image("image-gpu", IMAGE, BUILD_BYTES, tmp_path_factory.mktemp("clone-gpu"))


@pytest.fixture(scope="module")
def inside(gpu_image: str) -> dict:
    out = docker("run", "--rm", "--entrypoint", "python3", gpu_image, "-c", PROBE)
    return json.loads(out.stdout.splitlines()[-1])


def test_torch_is_built_for_the_cuda_the_readme_names(inside: dict):
    readme_cuda = re.search(r"is built for CUDA (\d+\.\d+)\b", (ROOT / "README.md").read_text()).group(1)
    assert inside["torch_cuda"] == readme_cuda


def test_vllm_is_its_cuda_build(inside: dict):
    """By vLLM's own rule (a version without "cpu", which its platform detection reads), for the CUDA target,
    with CUDA ops that load once a driver is there."""
    assert re.search(r'"vllm==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1) == inside["vllm"]
    assert (inside["cpu_build"], inside["target"]) == (False, "cuda")
    assert inside["cuda_ops"] in ("loaded", "libcuda.so.1: cannot open shared object file: No such file or directory")


def test_triton_can_compile_its_launcher(gpu_image: str):
    out = docker("run", "--rm", "--entrypoint", "python3", gpu_image, "-c", COMPILE, check=False)
    assert out.stdout.strip() == "launcher_probe", out.stderr[-3000:]


def test_nvidia_container_toolkit_environment(inside: dict):
    env = inside["nvidia_env"]
    assert (env["NVIDIA_VISIBLE_DEVICES"], env["NVIDIA_DRIVER_CAPABILITIES"]) == ("all", "compute,utility")


def test_non_root_and_cleaned_up(gpu_image: str, inside: dict):
    assert docker("image", "inspect", "-f", "{{.Config.User}}", gpu_image).stdout.strip() == "10001"
    assert inside["uid"] == 10001
    assert inside["leftovers"] == []
    assert docker("images", "-q", "--filter", "dangling=true", "--filter", LABEL).stdout.strip() == ""
    size = int(docker("image", "inspect", "-f", "{{.Size}}", gpu_image).stdout)
    print(f"\nimage size: {size / 1e9:.2f} GB")


def test_help(gpu_image: str):
    out = docker("run", "--rm", gpu_image, "--help")
    assert out.stdout.startswith("usage: chameleon-serve") and "--tensor-parallel-size" in out.stdout


def test_serving_without_a_gpu_fails_at_once_naming_it(gpu_image: str):
    name = f"chameleon-serve-no-gpu-{os.getpid()}"
    try:
        done = docker("run", "--name", name, "--entrypoint", "sh", gpu_image, "-c",
                      "chameleon-serve make-tiny /tmp/tiny >/dev/null && exec chameleon-serve --model /tmp/tiny",
                      check=False, timeout=NO_GPU_TIMEOUT_S)
    finally:
        docker("rm", "-f", "-v", name, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("chameleon-serve: error: no GPU found: vLLM 0.32.0 here is its GPU build"), done.stderr
    assert "Traceback" not in done.stderr
