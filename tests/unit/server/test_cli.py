"""The command line: make-tiny with its defaults, and flags mapped to Settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.shared.jacobi import BUDGET_KEY, default_budget, speculative_settings
from server.cli import FlagError, build_parser, default_to_v1_model_runner, main, settings_from_args

SET_BY_THE_CLI = ("VLLM_USE_V2_MODEL_RUNNER", "VLLM_CPU_KVCACHE_SPACE")


@pytest.fixture(autouse=True)
def _environment_restored(monkeypatch):
    """settings_from_args sets environment defaults for vLLM; each test's are undone after it."""
    for name in SET_BY_THE_CLI:
        original = os.environ.get(name)
        monkeypatch.setenv(name, original or "")  # records the original, restored after the test
        if original is None:
            monkeypatch.delenv(name)


def test_make_tiny_defaults(tmp_path):
    out = subprocess.run([sys.executable, "-m", "server.cli", "make-tiny", str(tmp_path / "m"),
                          "--codebook-size", "64"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("m")
    assert json.loads((tmp_path / "m" / "processor_config.json").read_text())["image_seq_length"] == 32 * 32


def test_flags_reach_settings(tmp_path):
    args = build_parser().parse_args([
        "--model", str(tmp_path), "--served-model-name", "served", "--port", "9001", "--api-key", "k",
        "--max-queued-requests", "3", "--max-body-bytes", "1000", "--dtype", "bfloat16", "--max-model-len", "2048",
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5", "--shutdown-grace-seconds", "5",
    ])
    s = settings_from_args(args)
    assert (s.served_model_name, s.port, s.api_key, s.max_queued_requests, s.max_body_bytes,
            s.shutdown_grace_s) == ("served", 9001, "k", 3, 1000, 5.0)
    e = s.engine_args
    assert (e.dtype, e.max_model_len, e.tensor_parallel_size, e.gpu_memory_utilization) == ("bfloat16", 2048, 2, 0.5)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_queued_requests"):
        settings_from_args(build_parser().parse_args(["--model", str(tmp_path), "--max-queued-requests", "-1"]))


def test_embedded_tiny_model_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr("server.cli.DEFAULT_CACHE", tmp_path)
    s = settings_from_args(build_parser().parse_args([]))
    assert s.served_model_name == "tiny-chameleon" and s.model == str(tmp_path / "tiny-chameleon")
    assert s.engine_args.enforce_eager and (tmp_path / "tiny-chameleon" / "vqgan.ckpt").exists()


def test_convert_and_make_tiny_meta_layout(tmp_path):
    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    release = cli("make-tiny", str(tmp_path / "meta"), "--meta-layout", "--shards", "2", "--codebook-size", "64")
    assert sorted(p.name for p in (tmp_path / "meta" / "models" / "7b").iterdir()) == [
        "consolidated.00.pth", "consolidated.01.pth", "params.json"]
    out = cli("convert", release, str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert out.endswith("hf") and config["model_parallel_size"] == 2 and "<image>" in config["vocabulary_map"]


def test_v1_model_runner_is_the_default_and_the_user_may_choose_v2(tmp_path, monkeypatch):
    import vllm.envs

    env: dict[str, str] = {}
    assert default_to_v1_model_runner(env) and env == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    env = {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    assert not default_to_v1_model_runner(env) and env == {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    # Wired where the server starts, before the engine config exists: vLLM reads it when choosing the runner.
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    settings_from_args(build_parser().parse_args(["--model", str(tmp_path)]))
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0" and vllm.envs.VLLM_USE_V2_MODEL_RUNNER is False
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    settings_from_args(build_parser().parse_args(["--model", str(tmp_path)]))
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "1" and vllm.envs.VLLM_USE_V2_MODEL_RUNNER is True


def _memory_node(monkeypatch, free: int, total: int) -> None:
    from vllm.utils import cpu_resource_utils
    from vllm.utils.cpu_resource_utils import MemoryNodeInfo

    monkeypatch.setattr(cpu_resource_utils, "get_memory_node_info",
                        lambda node=0: MemoryNodeInfo(total_memory=total, available_memory=free))


def test_cpu_kv_cache_sized_from_free_memory_unless_the_user_gave_one(tmp_path, monkeypatch):
    """Issue 21: NUMA node 0 of 8.21 GiB with 7.19 GiB free, where vLLM's default (0.92 of the total, 7.56 GiB)
    refuses to start; with no size given, the server passes a KV size that fits."""
    from vllm.platforms import current_platform

    from engine.frontend.cpu_kv import GIB, cpu_kv_cache_bytes, weight_bytes

    if not current_platform.is_cpu():
        pytest.skip("the CPU build's rule")
    free, total = int(7.19 * GIB), int(8.21 * GIB)
    _memory_node(monkeypatch, free, total)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 4096)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)

    def engine_args(*flags: str):
        return settings_from_args(build_parser().parse_args(["--model", str(tmp_path), *flags])).engine_args

    auto = engine_args()
    assert auto.kv_cache_memory_bytes == cpu_kv_cache_bytes(free, total, weight_bytes(tmp_path)) > 2 * GIB
    assert auto.gpu_memory_utilization == 0.92  # vLLM's default, restored where the user gave none
    assert engine_args("--tensor-parallel-size", "2").kv_cache_memory_bytes == cpu_kv_cache_bytes(
        free, total, weight_bytes(tmp_path), workers=2)
    # The user's own choice is left alone: a size, a utilization, or the legacy variable.
    assert engine_args("--kv-cache-memory-bytes", "1G").kv_cache_memory_bytes == 2**30
    given = engine_args("--gpu-memory-utilization", "0.5")
    assert (given.kv_cache_memory_bytes, given.gpu_memory_utilization) == (None, 0.5)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert engine_args().kv_cache_memory_bytes is None  # vLLM's CPU platform turns the variable into bytes


def test_no_room_for_a_cpu_kv_cache_is_one_clear_line(tmp_path, monkeypatch):
    from vllm.platforms import current_platform

    from engine.frontend.cpu_kv import GIB

    if not current_platform.is_cpu():
        pytest.skip("the CPU build's rule")
    _memory_node(monkeypatch, 2 * GIB, 8 * GIB)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr("server.cli.preflight", lambda *a: pytest.fail("the memory check comes first"))
    with pytest.raises(SystemExit, match="chameleon-serve: error: not enough free memory for a KV cache"):
        main(["--model", str(tmp_path)])


def _no_platform(monkeypatch) -> None:
    """vLLM's GPU build where no GPU is visible (as in tests/deploy/test_gpu_image.py's container)."""
    import vllm.platforms

    monkeypatch.setattr(vllm.platforms, "resolve_current_platform_cls_qualname",
                        lambda: "vllm.platforms.interface.UnspecifiedPlatform")


def test_the_gpu_build_without_a_gpu_is_one_clear_line(tmp_path, monkeypatch):
    _no_platform(monkeypatch)
    monkeypatch.setattr("server.cli.build_parser", lambda: pytest.fail("the device check comes first"))
    with pytest.raises(SystemExit, match="chameleon-serve: error: no GPU found: vLLM .* is its GPU build"):
        main(["--model", str(tmp_path)])


def test_the_gpu_build_without_a_gpu_shows_help(monkeypatch):
    _no_platform(monkeypatch)

    def execvpe(path, args, env):
        raise SystemExit(args[1:], env["VLLM_TARGET_DEVICE"])

    monkeypatch.setattr("server.cli.os.execvpe", execvpe)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.args == (["-m", "server.cli", "--help"], "cpu")


def _engine_args(tmp_path, *flags: str):
    return settings_from_args(build_parser().parse_args(["--model", str(tmp_path), *flags])).engine_args


@pytest.mark.parametrize("budget", [0, 1, 40])
def test_the_image_jacobi_budget_sets_vllm_speculative_decoding(tmp_path, budget):
    """SJD is vLLM's speculative decoding with our proposer; the budget reaches the workers in additional_config,
    beside the user's own entries. 0 turns it off: no speculative config at all."""
    e = _engine_args(tmp_path, "--image-jacobi-budget", str(budget), "--additional-config", '{"mine": 1}')
    assert e.speculative_config == speculative_settings(budget)[0]
    assert e.additional_config == {"mine": 1, BUDGET_KEY: budget}
    assert (e.speculative_config is None) == (budget == 0)


@pytest.mark.parametrize("cuda", [False, True])
def test_the_default_budget_is_the_device_kinds(tmp_path, monkeypatch, cuda):
    """Unset, the budget is the device kind's (a GPU's or a CPU's)."""
    from vllm.platforms import current_platform

    monkeypatch.setattr(current_platform, "is_cuda", lambda: cuda)
    e = _engine_args(tmp_path)
    budget = default_budget("cuda" if cuda else "cpu")
    assert (e.speculative_config, e.additional_config) == speculative_settings(budget)


@pytest.mark.parametrize("budget", ["0", "8"])
def test_a_speculative_config_of_the_users_is_refused_in_one_line(tmp_path, budget):
    """The engine runs no proposer but SJD's, so another is refused at start, whether SJD is on or off."""
    flags = ["--model", str(tmp_path), "--image-jacobi-budget", budget,
             "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']
    with pytest.raises(SystemExit, match="chameleon-serve: error: --speculative-config is not supported: .*"
                                         "--image-jacobi-budget N; 0 turns it off"):
        main(flags)


def test_a_negative_budget_is_refused(tmp_path):
    with pytest.raises(FlagError, match="--image-jacobi-budget: .* >= 0"):
        _engine_args(tmp_path, "--image-jacobi-budget", "-1")
    assert _engine_args(tmp_path, "--image-jacobi-budget", "0").speculative_config is None
