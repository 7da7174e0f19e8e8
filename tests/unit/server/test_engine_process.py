"""Where the model runs: inside vLLM's EngineCore process on the CPU build at one worker, unless told otherwise."""

from __future__ import annotations

import os

from vllm.engine.arg_utils import AsyncEngineArgs

from server.cli import model_in_engine_core


def test_one_cpu_worker_runs_in_the_engine_core(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    args = AsyncEngineArgs(model="m")
    chosen = model_in_engine_core(args)
    assert chosen.distributed_executor_backend == "uni"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # else vLLM's CPU platform turns uni into mp
    assert args.distributed_executor_backend is None  # the caller's args are left as they were


def test_parallel_engines_and_a_chosen_executor_are_left_alone(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    for chosen in ({"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}, {"distributed_executor_backend": "mp"}):
        args = AsyncEngineArgs(model="m", **chosen)
        assert model_in_engine_core(args) is args
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
