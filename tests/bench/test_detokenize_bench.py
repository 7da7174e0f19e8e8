"""The detokenizer benchmark runs on a checkpoint of the project's own and reports both detokenizers."""

from __future__ import annotations

from bench.detokenize_bench import per_image_ms
from engine.offline.tiny import TinySpec, make_tiny


def test_reports_vllms_and_ours_per_image_size(tmp_path):
    model = make_tiny(tmp_path / "tiny", TinySpec(grid=4, codebook_size=64))
    figures = per_image_ms(model, code_counts=(16, 64), repeats=1)
    assert set(figures) == {"16", "64"}
    assert all(f["vllm_ms"] > 0 and f["ours_ms"] > 0 for f in figures.values())
