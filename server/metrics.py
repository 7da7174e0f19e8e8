"""Prometheus metrics: vLLM's own engine metrics (same registry, same names) plus ``chameleon:`` image metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

IMAGES_ENCODED = Counter("chameleon:images_encoded_total", "Input images VQ-encoded into prompt tokens")
IMAGES_GENERATED = Counter("chameleon:images_generated_total", "Images the model wrote, decoded to PNG")
IMAGE_TOKENS = Counter("chameleon:image_tokens_generated_total", "Generated BOI, image-code and EOI tokens")
DECODE_SECONDS = Histogram(
    "chameleon:image_decode_seconds", "From a finished image span to its PNG (batched VQGAN decode + PNG)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Counted per engine step where the front end receives the engine's outputs: engine/frontend/image_steps.py
FORWARD_PASSES = Histogram(
    "chameleon:image_forward_passes",
    "Engine steps (forward passes) per image span that reached its EOI: steps that gave its request at least one "
    "token after BOI, through EOI (without speculative Jacobi decoding, the span's token count)",
    buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
CODES_PER_STEP = Histogram(
    "chameleon:image_codes_accepted_per_step",
    "Per engine step of a request inside an image span: the span's tokens (codes, framing, EOI) it committed "
    "(1 without speculative Jacobi decoding)",
    buckets=tuple(range(1, 17)),
)

GUIDED = Counter("chameleon:guided_requests_total", "Requests with classifier-free guidance (cfg_scale != 1)")
HTTP_REQUESTS = Counter("chameleon:http_requests_total", "HTTP requests answered, by route, method and status",
                        ["route", "method", "status"])
HTTP_IN_FLIGHT = Gauge("chameleon:http_requests_in_flight", "HTTP requests being answered, streams included",
                       ["route"])
HTTP_SECONDS = Histogram(
    "chameleon:http_request_duration_seconds", "From request to the last byte of the response, by route",
    ["route"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


def record_images_encoded(count: int) -> None:
    IMAGES_ENCODED.inc(count)


def record_images_generated(count: int, seconds: float) -> None:
    IMAGES_GENERATED.inc(count)
    DECODE_SECONDS.observe(seconds)


def record_image_tokens(count: int) -> None:
    IMAGE_TOKENS.inc(count)


class ImageSteps:
    """The front end's ``ImageStepObserver`` (``engine/frontend/image_steps.py``), writing the two histograms."""

    def span_step(self, tokens: int) -> None:
        CODES_PER_STEP.observe(tokens)

    def image_done(self, steps: int) -> None:
        FORWARD_PASSES.observe(steps)


IMAGE_STEPS = ImageSteps()


def record_guided_request() -> None:
    """A guided request started; its unconditional companion's KV shows in vLLM's own ``vllm:kv_cache_usage_perc``."""
    GUIDED.inc()


def http_request_started(route: str) -> None:
    HTTP_IN_FLIGHT.labels(route).inc()


def http_request_finished(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_IN_FLIGHT.labels(route).dec()
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_SECONDS.labels(route).observe(seconds)


def exposition() -> tuple[bytes, str]:
    """The default registry, where vLLM's stat logger writes its ``vllm:`` metrics, as Prometheus text."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
