"""ClipDataModule: seeded order, exact resumption at a batch, in-memory and streamed shards, splits across ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from videolavit.data.datamodules import ClipDataModule
from videolavit.data.shards import ClipShardWriter
from videolavit.errors import MissingArtifactError

TRAIN_CLIPS, VAL_CLIPS = 10, 5


@pytest.fixture
def clips_cfg(tiny_cfg_factory, tmp_path):
    """Train/val shards of 3 clips each; clip i's motion is filled with i, so batches can be told apart."""
    for split, n in (("train", TRAIN_CLIPS), ("val", VAL_CLIPS)):
        with ClipShardWriter(tmp_path / "clips", split, clips_per_shard=3) as writer:
            for i in range(n):
                writer.write(
                    {
                        "key": f"{split}{i:02d}__c000",
                        "motion": np.full((2, 4, 2, 3), i, np.float32),
                        "keyframe": np.zeros((4, 4, 3), np.uint8),
                        "meta": {"video_id": f"{split}{i:02d}", "clip": 0, "split": split, "caption": "", "start_time": 0.0},
                    }
                )
    return lambda *o: tiny_cfg_factory(*o)


def keys(loader, batches: int) -> list[list[str]]:
    return [batch["key"] for batch in itertools.islice(loader, batches)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_train_order_is_seeded_and_every_epoch_covers_the_split(clips_cfg, in_memory):
    make = lambda seed: ClipDataModule(clips_cfg(f"seed={seed}"), batch_size=2, in_memory=in_memory)  # noqa: E731
    first = keys(make(0).train_loader(), 10)
    assert first == keys(make(0).train_loader(), 10)
    assert first != keys(make(1).train_loader(), 10)
    flat = [k for batch in first for k in batch]
    assert sorted(flat[:TRAIN_CLIPS]) == sorted(flat[TRAIN_CLIPS:]) == [f"train{i:02d}__c000" for i in range(TRAIN_CLIPS)]
    assert flat[:TRAIN_CLIPS] != flat[TRAIN_CLIPS:]  # epochs are reshuffled


@pytest.mark.parametrize("in_memory", [True, False])
def test_resuming_at_a_batch_continues_the_same_stream(clips_cfg, in_memory):
    dm = ClipDataModule(clips_cfg(), batch_size=3, in_memory=in_memory)
    full = keys(dm.train_loader(), 12)
    assert keys(dm.train_loader(start_batch=7), 5) == full[7:]


def test_streamed_resumption_with_worker_processes(clips_cfg):
    dm = ClipDataModule(clips_cfg("compute.num_workers=2"), batch_size=2, in_memory=False)
    full = keys(dm.train_loader(), 10)
    assert keys(dm.train_loader(start_batch=5), 5) == full[5:]
    assert {k for batch in full for k in batch} == {f"train{i:02d}__c000" for i in range(TRAIN_CLIPS)}


@pytest.mark.parametrize("in_memory", [True, False])
def test_validation_sees_every_clip_once_in_order(clips_cfg, in_memory):
    dm = ClipDataModule(clips_cfg(), batch_size=2, in_memory=in_memory)
    batches = list(dm.val_dataloader())
    assert [k for b in batches for k in b["key"]] == [f"val{i:02d}__c000" for i in range(VAL_CLIPS)]
    motion = torch.cat([b["motion"] for b in batches])
    assert motion.shape == (VAL_CLIPS, 2, 4, 2, 3) and motion.dtype == torch.float32
    assert torch.equal(motion[:, 0, 0, 0, 0], torch.arange(VAL_CLIPS, dtype=torch.float32))
    assert "keyframe" not in batches[0]  # only the requested fields are decoded


def test_streamed_ranks_split_the_clips(clips_cfg):
    from videolavit.data.datamodules import ShardStream

    dm = ClipDataModule(clips_cfg(), batch_size=2)
    paths = dm.shard_paths("val")
    parts = [[r["key"] for r in ShardStream(paths, ("motion",), 0, False, rank=r, world_size=2)] for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == [f"val{i:02d}__c000" for i in range(VAL_CLIPS)]


def test_requested_fields_are_collated(clips_cfg):
    dm = ClipDataModule(clips_cfg(), fields=("motion", "keyframe", "meta"), batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    assert batch["keyframe"].shape == (2, 4, 4, 3) and batch["keyframe"].dtype == torch.uint8
    assert [m["video_id"] for m in batch["meta"]] == ["val00", "val01"]


def test_missing_shards_name_the_directory_and_the_fix(tiny_cfg_factory, tmp_path):
    dm = ClipDataModule(tiny_cfg_factory(), batch_size=2)
    with pytest.raises(MissingArtifactError, match="decompose") as err:
        dm.train_dataloader()
    assert str(tmp_path / "clips") in str(err.value)
