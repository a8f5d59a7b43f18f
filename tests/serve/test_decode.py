"""Heavy images (decode bombs of accepted formats) against everyone else's requests (issue 21 §1.3):
a batch does not wait for a request decoding one, and they are decoded one at a time within a CPU
share, the waiting ones bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgecnn.serve._decode import DecodePools, HeavyImage
from edgecnn.serve.batcher import MicroBatcher
from edgecnn.serve.config import ServeConfig
from edgecnn.serve.errors import ServeError
from edgecnn.serve.models import load_models


def _prepare(data: bytes, light_pixels: int | None):
    if light_pixels is not None and data.startswith(b"big"):
        raise HeavyImage
    time.sleep(0.05 if data.startswith(b"big") else 0.0)
    return data, None


def test_a_batch_does_not_wait_for_a_request_decoding_a_heavy_image():
    """Counting requests that decode a bomb as 'about to join' kept every other request waiting the
    full --max-delay-ms: the legitimate throughput fell to 18% under decode bombs."""
    (model,) = load_models(None, ServeConfig()).values()
    batcher = MicroBatcher(model, max_batch=8, max_delay_s=2.0, queue_size=8)

    async def next_job_wait(aside: bool) -> float:
        batcher._admitted = 2  # the request forming a batch, and one other
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        if aside:
            with batcher.aside():
                await batcher._next(loop.time() + 2.0, waiting=1)
        else:
            await batcher._next(loop.time() + 0.3, waiting=1)
        batcher._admitted = 0
        return time.perf_counter() - t0

    assert asyncio.run(next_job_wait(aside=True)) < 0.1  # the bomb's request will not join: no wait
    assert asyncio.run(next_job_wait(aside=False)) >= 0.25  # another request might: it waits


def test_heavy_images_take_turns_and_a_full_queue_gets_503():
    pools = DecodePools(2, heavy_share=0.5, heavy_queue=2)

    async def burst() -> list[object]:
        return await asyncio.gather(*(pools.image(_prepare, b"big%d" % i) for i in range(5)), return_exceptions=True)

    try:
        results = asyncio.run(burst())
    finally:
        pools.shutdown()
    refused = [r for r in results if isinstance(r, ServeError)]
    assert len(refused) == 2 and all(r.status == 503 and "waiting to be decoded" in r.message for r in refused)
    assert sorted(r[0] for r in results if not isinstance(r, ServeError)) == [b"big0", b"big1", b"big2"]


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_heavy_share_is_a_fraction_of_a_core(share):
    with pytest.raises(ValueError, match="heavy_share"):
        DecodePools(1, heavy_share=share)

