"""ReplayableShard on a real Ray dataset: later passes come from memory and equal the streamed one."""

from __future__ import annotations

import numpy as np

from phi3v_ray.data.shard_cache import ReplayableShard, batch_nbytes


def _dataset(ray_local, rows: int = 20):
    items = [{"row_id": i, "canvas": np.full((3, 4, 4), i, dtype=np.uint8)} for i in range(rows)]
    return ray_local.data.from_items(items)


def _row_ids(batches) -> list[int]:
    return [int(i) for batch in batches for i in batch["row_id"]]


def test_second_pass_is_replayed_from_memory_and_identical(ray_local) -> None:
    shard = ReplayableShard(_dataset(ray_local), limit_bytes=2**20)
    first = list(shard.iter_batches(batch_size=6))
    second = list(shard.iter_batches(batch_size=6))
    assert sorted(_row_ids(first)) == list(range(20))
    assert _row_ids(second) == _row_ids(first)
    assert all(np.array_equal(a["canvas"], b["canvas"]) for a, b in zip(first, second, strict=True))
    assert (shard.passes_streamed, shard.passes_replayed) == (1, 1)


def test_shard_over_the_limit_streams_every_pass(ray_local) -> None:
    dataset = _dataset(ray_local)
    one_batch = batch_nbytes(next(iter(dataset.iter_batches(batch_size=6, batch_format="numpy"))))
    shard = ReplayableShard(dataset, limit_bytes=one_batch * 2)  # the whole shard is ~4 batches
    for _ in range(3):
        assert sorted(_row_ids(shard.iter_batches(batch_size=6))) == list(range(20))
    assert (shard.passes_streamed, shard.passes_replayed, shard.cached) == (3, 0, False)


def test_partial_pass_is_not_kept_and_other_batch_sizes_stream(ray_local) -> None:
    shard = ReplayableShard(_dataset(ray_local), limit_bytes=2**20)
    iterator = shard.iter_batches(batch_size=6)
    next(iterator)
    iterator.close()  # the loop stopped mid-epoch (e.g. max_steps reached)
    assert not shard.cached
    assert sorted(_row_ids(shard.iter_batches(batch_size=6))) == list(range(20))
    assert shard.cached
    assert sorted(_row_ids(shard.iter_batches(batch_size=5))) == list(range(20))
    assert shard.passes_streamed == 3 and shard.passes_replayed == 0


def test_zero_limit_disables_the_cache(ray_local) -> None:
    shard = ReplayableShard(_dataset(ray_local), limit_bytes=0)
    list(shard.iter_batches(batch_size=6))
    list(shard.iter_batches(batch_size=6))
    assert (shard.passes_streamed, shard.passes_replayed) == (2, 0)
