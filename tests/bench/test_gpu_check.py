"""The GPU device check on this CPU-only machine: every check runs on the CPU, the CUDA-only probes say why
they are skipped, the table is printed and the JSON written; and as on the bare GPU machine (no vLLM, no
transformers, no numba), where the V2 adapter skips with its reason or comes from ``--vllm-src``.

No timing assertions: the figures are the script's to report, not the tests' to judge.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
QUICK = ["--rows", "4", "--repeats", "1", "--image-batches", "1", "2"]
ROWS = ["grammar text x4", "grammar forced x4", "grammar mixed x4", "grammar image x4", "nucleus x4",
        "sjd step x1 window 16", "sjd step x4 3 drafts", "v2 adapter mixed x4",
        "vqgan encode x1", "vqgan encode x2", "vqgan decode x1", "vqgan decode x2"]
# Runs the script as the lent GPU machine would: numba and transformers missing, vllm only where
# --vllm-src puts it (the installed copy is hidden).
BARE = """
import importlib.abc, importlib.machinery, runpy, sys

class Bare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in ("numba", "transformers"):
            raise ModuleNotFoundError(f"No module named {top!r} (bare machine)", name=top)
        if name == "vllm":
            beside_site = [p for p in sys.path if "site-packages" not in p]
            spec = importlib.machinery.PathFinder.find_spec(name, beside_site)
            if spec is None:
                raise ModuleNotFoundError("No module named 'vllm' (bare machine)", name="vllm")
            return spec
        return None

sys.meta_path.insert(0, Bare())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(args: list[str], tmp_path: Path, bare: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report.json"
    launcher = ["-c", BARE] if bare else []
    done = subprocess.run([sys.executable, *launcher, str(SCRIPT), *args, "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(out.read_text())


def by_part(report: dict) -> dict[str, dict]:
    return {row["part"]: row for row in report["rows"]}


def test_every_check_runs_on_the_cpu_and_cuda_probes_say_why_not(tmp_path):
    done, report = run([*QUICK, "--device", "cpu"], tmp_path)
    rows = by_part(report)
    assert list(rows) == ROWS
    for name, row in rows.items():
        assert row["status"] == "pass", (name, row)
        assert row["ms"] > 0, name
        assert row["sync"] == "skip: no CUDA device (sync debug mode needs one)", name
        assert row["vs_cpu"].startswith("skip: the device is the CPU")
        assert name in done.stdout
    assert "vllm from" in rows["v2 adapter mixed x4"]["detail"]
    assert rows["vqgan decode x2"]["unit"] == "ms/image" and rows["sjd step x4 3 drafts"]["unit"] == "ms/step"
    assert "12 drafts" in rows["sjd step x4 3 drafts"]["detail"]  # 3 a row: every window drafts in full
    assert report["device"] == "cpu" and report["numba"] != "" and "elapsed" in report
    assert ["part", "status", "time", "sync", "detail"] in [line.split() for line in done.stdout.splitlines()]


def test_bare_machine_skips_v2_with_its_reason_and_runs_the_rest(tmp_path):
    _, report = run([*QUICK, "--parts", "nucleus", "v2"], tmp_path, bare=True)
    rows = by_part(report)
    assert report["numba"].startswith("absent")
    assert rows["v2 adapter mixed x4"]["status"] == "skip"
    assert rows["v2 adapter mixed x4"]["detail"].startswith("vllm not importable")
    assert "--vllm-src" in rows["v2 adapter mixed x4"]["detail"]
    assert rows["nucleus x4"]["status"] == "pass", rows["nucleus x4"]


def test_bare_machine_takes_vllm_from_its_sources(tmp_path):
    """--vllm-src: a folder holding the installed vllm's .py files only (no compiled kernels)."""
    src = tmp_path / "vllm_src"
    installed = importlib.util.find_spec("vllm").submodule_search_locations[0]
    shutil.copytree(installed, src / "vllm", ignore=lambda folder, names: [
        n for n in names if not n.endswith(".py") and not Path(folder, n).is_dir()])
    _, report = run([*QUICK, "--parts", "v2", "--vllm-src", str(src)], tmp_path, bare=True)
    row = by_part(report)["v2 adapter mixed x4"]
    assert row["status"] == "pass", row
    assert f"vllm from {src / 'vllm'}" in row["detail"]
