"""``vllm bench serve`` without the ``vllm`` command (which dies at start on the CPU build here).

Same arguments as ``vllm bench serve``; for example, against a running chameleon-serve:

    python bench/vllm_bench_serve.py --backend openai-chat --base-url http://127.0.0.1:8000 \\
        --endpoint /v1/chat/completions --model tiny --tokenizer DIR --dataset-name random \\
        --random-input-len 32 --random-output-len 64 --ignore-eos --num-prompts 32 --max-concurrency 8
"""

from __future__ import annotations

if __name__ == "__main__":
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
