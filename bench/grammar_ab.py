"""SpanGrammar.apply on one CPU thread at Chameleon-7B's vocabulary (65,536 ids, 8,192 codes), per batch make-up:
the 10th percentile of 600 calls, in microseconds. Usage: ``python bench/grammar_ab.py REPO`` with REPO a
checkout (a ``git worktree`` of another commit for an A/B); run each side in turn, several rounds."""
import sys
import time

sys.path.insert(0, sys.argv[1])

import numpy as np
import torch

from engine.shared.request_options import IMAGE_ONLY, INTERLEAVED, RequestOptions
from engine.shared.vocab import TokenLayout
from engine.worker.span_grammar import SpanGrammar

torch.set_num_threads(1)
V = 65536
layout = TokenLayout(boi=8197, eoi=8196, image_placeholder=8711, sep=8710, vocab_size=V, image_seq_length=1024,
                     code_to_id=tuple(range(4, 8196)))


def bench(kinds, reps=600):
    g = SpanGrammar(layout, 64)
    slots = np.arange(len(kinds))
    for s, k in enumerate(kinds):
        if k == "image":
            g.add(s, RequestOptions(mode=IMAGE_ONLY, image_temperature=0.7, image_top_p=0.9, seed=s), [8197, 4, 5], 2)
        else:
            g.add(s, RequestOptions(mode=INTERLEAVED, seed=s), [1, 2, 3], 3)
    logits = torch.randn(len(kinds), V)
    for _ in range(20):
        g.apply(logits.clone(), slots)
    times = []
    for _ in range(reps):
        x = logits.clone()
        t = time.perf_counter(); g.apply(x, slots); times.append(time.perf_counter() - t)
    return np.percentile(times, 10) * 1e6


for name, kinds in [("8 image", ["image"] * 8), ("8 text + 8 image", ["text"] * 8 + ["image"] * 8),
                    ("16 text", ["text"] * 16), ("32 image", ["image"] * 32)]:
    print(f"{name}: {bench(kinds):.0f} us")
