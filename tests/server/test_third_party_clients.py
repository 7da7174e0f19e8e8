"""Clients we do not write, against the live server: LiteLLM and vLLM's own benchmark client."""

from __future__ import annotations

import argparse
import os

import pytest
from conftest import API_KEY, MODEL
from testimages import data_url, noise_image


@pytest.fixture(scope="module")
def litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its price list at import
    import litellm

    return litellm


def _litellm_kw(server) -> dict:
    return dict(model=f"openai/{MODEL}", api_base=f"{server.url}/v1", api_key=API_KEY, temperature=0, max_tokens=12)


def test_litellm_text_and_stream(server, litellm):
    messages = [{"role": "user", "content": "Write a line about the sea."}]
    whole = litellm.completion(messages=messages, **_litellm_kw(server))
    text = whole.choices[0].message.content
    assert isinstance(text, str) and text and whole.usage.completion_tokens <= 12
    chunks = list(litellm.completion(messages=messages, stream=True, **_litellm_kw(server)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_litellm_image_input(server, litellm):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                             {"type": "image_url", "image_url": {"url": data_url(noise_image(1))}}]}]
    reply = litellm.completion(messages=messages, **_litellm_kw(server))
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.prompt_tokens > 100  # the image's codes are in the prompt


def test_vllm_benchmark_client(server, tiny_dir, monkeypatch, tmp_path):
    """`vllm bench serve --backend openai-chat` (its module, as the CPU build's `vllm` command cannot start)."""
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the benchmark's request functions read the key from here
    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    args: argparse.Namespace = parser.parse_args([
        "--backend", "openai-chat", "--base-url", server.url, "--endpoint", "/v1/chat/completions",
        "--model", MODEL, "--tokenizer", str(tiny_dir), "--dataset-name", "random", "--random-input-len", "24",
        "--random-output-len", "8", "--num-prompts", "32", "--max-concurrency", "8", "--seed", "0",
        "--disable-tqdm", "--result-dir", str(tmp_path)])
    result = serve.main(args)
    assert result["completed"] == 32 and result["failed"] == 0
    assert result["total_output_tokens"] > 0
