"""vLLM's finish reasons as OpenAI's: a reply the engine ended early must never pass for a whole one."""

from __future__ import annotations

import pytest

from server.errors import APIError, Unavailable
from server.generation import _finish


def test_finish_reasons_map_to_openais():
    assert [_finish(r) for r in (None, "stop", "length", "repetition")] == [None, "stop", "length", "stop"]


@pytest.mark.parametrize("reason, error, status", [("abort", Unavailable, 503), ("error", APIError, 500)])
def test_a_reply_the_engine_ended_early_raises(reason, error, status):
    with pytest.raises(error) as raised:
        _finish(reason)
    assert raised.value.status == status and raised.value.code == f"engine_{reason}"
