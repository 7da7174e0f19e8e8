"""Command line: ``chameleon-serve [--model PATH] [vllm serve flags...]``, ``chameleon-serve make-tiny DIR``
and ``chameleon-serve convert META_RELEASE DST``.

Engine flags are vLLM's own (``--dtype``, ``--max-model-len``,
``--tensor-parallel-size``, ``--gpu-memory-utilization``, ``--enforce-eager``, ...),
parsed by vLLM's parser so every ``vllm serve`` engine flag passes through. This
is the only module that reads or sets the environment; the server flags' defaults are ``Settings``'.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import MutableMapping
from pathlib import Path
from types import FrameType

import uvicorn

from engine.frontend.cpu_kv import GIB, RESERVE_BYTES, SHARE, CpuMemoryError, cpu_kv_cache_bytes, weight_bytes
from engine.offline.preflight import preflight
from engine.shared.jacobi import default_budget, speculative_settings
from engine.shared.vocab import CheckpointError
from server.image_urls import RemoteImagePolicy
from server.settings import IMAGE_OUTPUT_FORMATS, Settings

TINY_NAME = "tiny-chameleon"
MODEL_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
DEFAULT_CACHE = Path(os.environ.get("CHAMELEON_CACHE", Path.home() / ".cache" / "chameleon-serve"))
class FlagError(ValueError):
    """Flags that cannot be served as given: said in one line at start."""


def _tiny_default() -> str:
    """The embedded default model: generated on first use, reused after."""
    from engine.offline.tiny import make_tiny

    path = DEFAULT_CACHE / TINY_NAME
    if not (path / "vqgan.ckpt").exists():
        logging.getLogger(__name__).info("writing the embedded tiny checkpoint to %s", path)
        make_tiny(path)
    return str(path)


def _hf_layout(model: str) -> str:
    """``model`` itself, or for a Meta-layout release its Hugging Face conversion, made once in the cache
    (keyed by the release's path and its weights' modification times) and reused after."""
    import hashlib

    from engine.offline.meta_layout import convert_meta_checkpoint, find_meta_model_dir

    model_dir = find_meta_model_dir(model)
    if model_dir is None:
        return model
    stamp = [str(Path(model).resolve())] + [f"{f.name}:{f.stat().st_mtime_ns}" for f in sorted(model_dir.iterdir())]
    dst = DEFAULT_CACHE / "converted" / hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    if not (dst / "vqgan.ckpt").exists():
        logging.getLogger(__name__).info("converting the Meta-layout release %s to %s", model, dst)
        convert_meta_checkpoint(model, dst)
    return str(dst)


def default_to_v1_model_runner(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``VLLM_USE_V2_MODEL_RUNNER=0`` unless the user set it; True when this default was applied.

    vLLM 0.32 runs Model Runner V2 on GPUs whenever Triton is present; our end-to-end tests cover the V1
    runner (the CPU build's), V2 only through its sampling objects on CPU tensors. Until a GPU run of V2 is
    recorded, V1 is the default everywhere; ``VLLM_USE_V2_MODEL_RUNNER=1`` opts in to V2.
    """
    if environ.get(MODEL_RUNNER_ENV, "") != "":
        return False
    environ[MODEL_RUNNER_ENV] = "0"
    return True


def model_in_engine_core(engine_args, environ: MutableMapping[str, str] = os.environ):
    """``engine_args`` with the model run inside vLLM's EngineCore process (its ``uni`` executor), on the CPU
    build at one worker where the user chose no executor.

    That is vLLM's own default on GPUs; its CPU build instead starts a worker process beside the EngineCore
    (unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and the two hand every step over twice through a
    shared-memory queue that each side polls, each taking most of a core while it waits (bench/RESULTS.md,
    the note on executors). The front end stays in its own process either way (AsyncLLM always runs the
    EngineCore apart); the EngineCore's threads get the worker's binding (``engine/frontend/client.py``).
    """
    from vllm.platforms import current_platform

    world = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size * engine_args.data_parallel_size
    if not current_platform.is_cpu() or world != 1 or engine_args.distributed_executor_backend is not None:
        return engine_args
    environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read by the CPU platform when it checks the config
    return dataclasses.replace(engine_args, distributed_executor_backend="uni")


def default_jacobi_budget() -> int:
    """``--image-jacobi-budget`` where not given: the device kind's draft tokens per step."""
    from vllm.platforms import current_platform

    return default_budget("cuda" if current_platform.is_cuda() else "cpu")


def with_jacobi(engine_args, budget: int):
    """``engine_args`` running speculative Jacobi decoding of image spans with ``budget`` draft tokens per step
    (0: off): vLLM's speculative decoding with our proposer, the budget in its ``additional_config``.

    The engine runs no other proposer, so a ``--speculative-config`` of the user's is refused, SJD on or off.
    """
    if engine_args.speculative_config is not None:
        raise FlagError("--speculative-config is not supported: chameleon-serve's engine runs vLLM's speculative "
                        "decoding only for its own speculative Jacobi decoding of images (--image-jacobi-budget N; "
                        "0 turns it off) and cannot run another proposer; leave --speculative-config out")
    try:
        spec, extra = speculative_settings(budget)
    except ValueError as exc:
        raise FlagError(f"--image-jacobi-budget: {exc}") from None
    return dataclasses.replace(engine_args, speculative_config=spec,
                               additional_config={**engine_args.additional_config, **extra})


def build_parser() -> argparse.ArgumentParser:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    defaults = RemoteImagePolicy()
    parser = FlexibleArgumentParser(prog="chameleon-serve", description=__doc__.splitlines()[0])
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=_setting("host"))
    server.add_argument("--port", type=int, default=_setting("port"))
    server.add_argument("--api-key", default=os.environ.get("CHAMELEON_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (env CHAMELEON_API_KEY)")
    server.add_argument("--max-images-per-request", type=int, default=_setting("max_images_per_request"))
    server.add_argument("--max-image-pixels", type=int, default=_setting("max_image_pixels"),
                        help="refuse input images with more pixels, checked before decoding")
    server.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the checkpoint's")
    server.add_argument("--max-body-bytes", type=int, default=_setting("max_body_bytes"),
                        help="refuse larger request bodies with 413")
    server.add_argument("--max-queued-requests", type=int, default=_setting("max_queued_requests"),
                        help="requests allowed to wait beyond the engine's --max-num-seqs running ones; "
                             "past it, 429 with Retry-After (default: unbounded)")
    server.add_argument("--shutdown-grace-seconds", type=float, default=_setting("shutdown_grace_s"),
                        help="on SIGTERM, how long in-flight requests may run before they are aborted")
    server.add_argument("--image-output-format", default=_setting("image_output_format"), choices=IMAGE_OUTPUT_FORMATS,
                        help="how chat replies carry generated images unless a request sets image_output_format: "
                             "an ordered content-part list, OpenRouter's message.images, or inline Markdown")
    server.add_argument("--no-playground", action="store_true", help="do not serve the browser playground at /")
    server.add_argument("--vqgan", default=None,
                        help="VQGAN decoder for image output: Meta's vqgan.ckpt with vqgan.yaml beside it "
                             "(default: vqgan.ckpt in the model folder)")
    server.add_argument("--allowed-image-hosts", default="",
                        help="comma-separated hosts whose http(s) image URLs may be fetched (exact names or "
                             "IPs, '*.example.com' for subdomains); empty (default): only data: URLs")
    server.add_argument("--max-image-bytes", type=int, default=defaults.max_bytes,
                        help="largest remote image fetched")
    server.add_argument("--image-fetch-timeout-seconds", type=float, default=defaults.timeout_s,
                        help="deadline for fetching one remote image, redirects included")
    server.add_argument("--image-jacobi-budget", type=int, default=None,
                        help="speculative Jacobi decoding of images: draft tokens per step, shared among the "
                             "batch's image rows; 0 turns it off (default: the device kind's, "
                             "engine/shared/jacobi.py)")
    parser = AsyncEngineArgs.add_cli_args(parser)
    # None: not given (vLLM's default is restored in settings_from_args), so that a CPU KV size is chosen
    # only where the user chose nothing (_size_cpu_kv_cache).
    parser.set_defaults(model=None, gpu_memory_utilization=None)
    return parser


def _setting(name: str):
    """The default of ``Settings.<name>``: the flags' defaults are written once, there."""
    return Settings.__dataclass_fields__[name].default


def _size_cpu_kv_cache(args: argparse.Namespace) -> None:
    """On the CPU build, where the user gave none of ``--kv-cache-memory-bytes``, ``VLLM_CPU_KVCACHE_SPACE``
    and ``--gpu-memory-utilization``: a KV cache size from the memory free on the node vLLM's worker uses
    (engine/frontend/cpu_kv.py), not vLLM's default of 0.92 of its total, which fails wherever some of it is in use."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform

    utilization_given = args.gpu_memory_utilization is not None
    if not utilization_given:
        args.gpu_memory_utilization = EngineArgs.gpu_memory_utilization
    if not current_platform.is_cpu() or utilization_given or args.kv_cache_memory_bytes is not None \
            or os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") != "":
        return
    from vllm.utils import cpu_resource_utils

    node = cpu_resource_utils.get_allowed_cpu_list()[0].numa_node  # the node vLLM's first worker checks
    memory = cpu_resource_utils.get_memory_node_info(node)
    workers = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size
    weights = weight_bytes(args.model, args.vqgan) * args.data_parallel_size  # TP and PP split them
    args.kv_cache_memory_bytes = cpu_kv_cache_bytes(memory.available_memory, memory.total_memory, weights,
                                                    workers)
    logging.getLogger(__name__).info(
        "CPU KV cache: %.2f GiB per worker (--kv-cache-memory-bytes %d), sized from free memory: NUMA node %d "
        "has %.2f of %.2f GiB free, the weights take %.2f GiB: %.0f%% of what is left after them and %.0f GiB for "
        "the processes, over %d worker(s) (vLLM's default would reserve %.2f of the node's total, and needs that "
        "much free). Set --kv-cache-memory-bytes or VLLM_CPU_KVCACHE_SPACE to choose",
        args.kv_cache_memory_bytes / GIB, args.kv_cache_memory_bytes, node, memory.available_memory / GIB,
        memory.total_memory / GIB, weights / GIB, SHARE * 100, RESERVE_BYTES / GIB, workers,
        args.gpu_memory_utilization)


def _require_a_device(argv: list[str]) -> None:
    """vLLM's GPU build finds no platform where no GPU is visible: its parser cannot be built then, and an engine
    would fail minutes into its start with errors that do not name the cause. Said here, before anything loads.
    Help alone is shown, by a fresh process on vLLM's CPU platform (same flags): vLLM fixes its platform when its
    config is first imported, which this module's imports have done."""
    from vllm.platforms import resolve_current_platform_cls_qualname

    if resolve_current_platform_cls_qualname() != "vllm.platforms.interface.UnspecifiedPlatform":
        return
    if {"-h", "--help"} & set(argv):
        os.execvpe(sys.executable, [sys.executable, "-m", "server.cli", *argv],
                   {**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    import vllm

    sys.exit(f"chameleon-serve: error: no GPU found: vLLM {vllm.__version__} here is its GPU build (not vllm-cpu), "
             "and NVIDIA's driver reports no GPU or is not in reach (a container gets it with `docker run --gpus "
             "all` and the NVIDIA container toolkit, or with a `nvidia.com/gpu` limit in Kubernetes). Without a "
             "GPU, run the CPU build (`make image`: chameleon-serve:cpu)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from engine.shared.families import recognize

    if args.model is None:
        args.model = _tiny_default()
        args.enforce_eager = True  # the tiny model starts in ~25 s eager vs ~85 s compiled
        args.served_model_name = args.served_model_name or [TINY_NAME]
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; CPU builds only, ample for the tiny model
    log = logging.getLogger(__name__)
    if default_to_v1_model_runner():
        log.info("%s=0 (default): vLLM's V1 model runner, the one tested end to end; set %s=1 for Model "
                 "Runner V2 (same results, no GPU run recorded yet)", MODEL_RUNNER_ENV, MODEL_RUNNER_ENV)
    else:
        log.info("%s=%s, as set by the user", MODEL_RUNNER_ENV, os.environ[MODEL_RUNNER_ENV])
    given = args.model
    args.model = _hf_layout(args.model)
    _size_cpu_kv_cache(args)
    budget = default_jacobi_budget() if args.image_jacobi_budget is None else args.image_jacobi_budget
    engine_args = with_jacobi(model_in_engine_core(AsyncEngineArgs.from_cli_args(args)), budget)
    log.info("speculative Jacobi decoding of images: %s", f"{budget} draft tokens per step" if budget else "off")
    names = engine_args.served_model_name
    served = (names[0] if isinstance(names, list) else names) or given
    template = Path(args.chat_template).read_text() if args.chat_template else None
    return Settings(
        model=args.model, served_model_name=served, engine_args=engine_args, host=args.host, port=args.port,
        api_key=args.api_key, max_images_per_request=args.max_images_per_request,
        max_image_pixels=args.max_image_pixels, chat_template=template, vqgan=Path(args.vqgan) if args.vqgan else None,
        max_body_bytes=args.max_body_bytes, max_queued_requests=args.max_queued_requests,
        shutdown_grace_s=args.shutdown_grace_seconds, image_output_format=args.image_output_format,
        playground=not args.no_playground, family=recognize(given, args.model),
        remote_images=RemoteImagePolicy(
            allowed_hosts=frozenset(h.strip().lower() for h in args.allowed_image_hosts.split(",") if h.strip()),
            max_bytes=args.max_image_bytes, timeout_s=args.image_fetch_timeout_seconds),
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    if argv[:1] == ["make-tiny"]:
        _make_tiny_cli(argv[1:])
        return
    if argv[:1] == ["convert"]:
        _convert_cli(argv[1:])
        return
    _require_a_device(argv)
    try:
        settings = settings_from_args(build_parser().parse_args(argv))
    except (CpuMemoryError, FlagError) as e:
        sys.exit(f"chameleon-serve: error: {e}")
    try:  # a checkpoint that cannot be served fails now, in one line, not deep inside the engine's start
        settings = dataclasses.replace(settings, vqgan=preflight(settings.model, settings.vqgan))
    except CheckpointError as e:
        sys.exit(f"chameleon-serve: error: {e}")
    logging.getLogger(__name__).info("checkpoint family %s: sampling defaults %s", settings.family.name,
                                     settings.family.sampling)

    from server.app import create_app

    # On SIGTERM/SIGINT uvicorn stops accepting, lets in-flight requests finish for up to the grace
    # period (then cancels them, which aborts them in the engine), and re-raises the signal once done.
    # By then the drain is over: exit 0, as orchestrators expect of a clean stop (1 if the engine died).
    app = create_app(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(app.state.exit_code))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=settings.shutdown_grace_s)
    _DrainingServer(config).run()


class _DrainingServer(uvicorn.Server):
    """Marks the app as draining (readiness 503, new requests 503) the moment a shutdown signal
    arrives, before uvicorn closes its socket and waits for in-flight requests."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.config.app.state.draining = True
        super().handle_exit(sig, frame)


def _convert_cli(argv: list[str]) -> None:
    from engine.offline.meta_layout import convert_meta_checkpoint

    parser = argparse.ArgumentParser(prog="chameleon-serve convert",
                                     description="convert Meta's original Chameleon release layout to Hugging Face's")
    parser.add_argument("src", help="the release folder (models/<size>/, tokenizer/)")
    parser.add_argument("dst")
    a = parser.parse_args(argv)
    print(convert_meta_checkpoint(a.src, a.dst))


def _make_tiny_cli(argv: list[str]) -> None:
    from engine.offline.tiny import TinySpec, make_tiny, make_tiny_meta
    from engine.shared.families import CHAMELEON, FAMILIES

    parser = argparse.ArgumentParser(prog="chameleon-serve make-tiny", description="write a tiny random checkpoint")
    defaults = TinySpec()
    parser.add_argument("dst")
    parser.add_argument("--grid", type=int, default=defaults.grid, help="image codes per side")
    parser.add_argument("--codebook-size", type=int, default=defaults.codebook_size)
    parser.add_argument("--swin-norm", action="store_true")
    parser.add_argument("--meta-layout", action="store_true", help="write Meta's original release layout")
    parser.add_argument("--shards", type=int, default=1, help="tensor-parallel files (with --meta-layout)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default=defaults.family, choices=[f.name for f in FAMILIES],
                        help="write the checkpoint as this family's authors publish theirs (Hugging Face layout)")
    a = parser.parse_args(argv)
    if a.meta_layout and a.family != CHAMELEON.name:
        parser.error("--meta-layout writes Chameleon's release layout only")
    spec = TinySpec(grid=a.grid, codebook_size=a.codebook_size, swin_norm=a.swin_norm, dtype=a.dtype, seed=a.seed,
                    family=a.family)
    print(make_tiny_meta(a.dst, spec, a.shards) if a.meta_layout else make_tiny(a.dst, spec))


if __name__ == "__main__":
    main()
