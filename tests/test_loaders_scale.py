"""Loaders at scale (issue 14 items 4, 6): shards through WebDataset from a folder, a URL or a pipe; the in-memory
choice on decoded bytes; a shuffle buffer bounded in bytes; the image index per rank; text read per loader worker."""

from __future__ import annotations

import itertools
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest

from videolavit.data import datamodules
from videolavit.data.datamodules import ClipDataModule, ImageDataModule, ShardStream, record_bytes
from videolavit.data.image_index import KEYFRAME_SUFFIX, build_index
from videolavit.data.lm_data import read_text_files
from videolavit.data.shards import ClipShardWriter, clip_shard_urls, iter_shard

FIELDS = ("keyframe", "motion", "frames", "meta")


def write_clips(out, split="train", n=8, per_shard=2, frames=False, codec="npy"):
    rng = np.random.default_rng(0)
    with ClipShardWriter(out, split, clips_per_shard=per_shard, frame_codec=codec) as writer:
        for i in range(n):
            record = {
                "key": f"{split}{i:02d}__c000",
                "motion": np.full((2, 4, 2, 3), i, np.float32),
                "keyframe": np.full((8, 8, 3), i, np.uint8),
                "meta": {"video_id": f"{split}{i:02d}", "clip": 0, "split": split, "caption": "", "start_time": 0.0},
            }
            if frames:  # smooth frames: a codec makes them far smaller than raw
                grid = np.linspace(0, 200, 64 * 96, dtype=np.float32).reshape(64, 96, 1)
                record["frames"] = np.broadcast_to((grid + i + rng.random((1, 1, 1)) * 4), (24, 64, 96, 3)).astype(np.uint8)
            writer.write(record)
    return out


def keys(loader, batches):
    return [b["key"] for b in itertools.islice(loader, batches)]


def test_a_pipe_and_an_fsspec_url_read_the_same_records_as_the_folder(tmp_path, tiny_cfg_factory):
    clips = write_clips(tmp_path / "clips", n=6)
    local = clip_shard_urls(clips, "train")
    url = clip_shard_urls(f"file://{clips}", "train")
    pipe = clip_shard_urls(f"pipe:cat {clips}/{{split}}-0of1-{{00000..00002}}.tar", "train")
    assert len(local) == len(url) == len(pipe) == 3 and url[0].startswith("file://") and pipe[0].startswith("pipe:cat ")
    want = [r for p in local for r in iter_shard(p, FIELDS)]
    for shards in (url, pipe):
        got = [r for p in shards for r in iter_shard(p, FIELDS)]
        assert [r["key"] for r in got] == [r["key"] for r in want]
        assert all(np.array_equal(a["motion"], b["motion"]) and a["meta"] == b["meta"] for a, b in zip(got, want))
    # The DataModule streams from a URL and from a pipe template as from the folder (same batches).
    folder = keys(ClipDataModule(tiny_cfg_factory(f"paths.clips={clips}"), batch_size=2, in_memory=False).train_loader(), 6)
    for spec in (f"file://{clips}", f"'pipe:cat {clips}/{{split}}-0of1-{{00000..00002}}.tar'"):
        dm = ClipDataModule(tiny_cfg_factory(f"paths.clips={spec}"), batch_size=2, in_memory=False)
        assert keys(dm.train_loader(), 6) == folder


def test_only_requested_fields_are_decoded_and_every_clip_yields_a_record(tmp_path):
    clips = write_clips(tmp_path / "clips", n=3, frames=True, codec="ffv1")
    (path,) = clip_shard_urls(clips, "train")[:1]
    records = list(iter_shard(path, ("motion",)))
    assert [sorted(r) for r in records] == [["key", "motion"]] * 2


def test_the_in_memory_choice_counts_decoded_bytes_not_shard_bytes(tmp_path, tiny_cfg_factory, monkeypatch):
    clips = write_clips(tmp_path / "clips", n=6, frames=True, codec="ffv1")
    disk = sum(p.stat().st_size for p in (tmp_path / "clips").glob("train-*.tar"))
    decoded = 6 * record_bytes(next(iter_shard(clip_shard_urls(clips, "train")[0], FIELDS)))
    assert decoded > 3 * disk  # the codec shrinks the frames: shard bytes would understate the memory
    monkeypatch.setattr(datamodules, "IN_MEMORY_MAX_BYTES", (disk + decoded) // 2)
    cfg = tiny_cfg_factory(f"paths.clips={clips}")
    assert not ClipDataModule(cfg, fields=FIELDS)._use_memory("train")  # frames decoded would not fit
    assert ClipDataModule(cfg, fields=("motion",))._use_memory("train")  # motion alone does
    # With decompose's stats.json the count comes from it (no header scan).
    (tmp_path / "clips" / "stats.json").write_text(json.dumps({"clips": {"train": 600}}))
    monkeypatch.setattr(datamodules, "IN_MEMORY_MAX_BYTES", 300 * record_bytes({"motion": np.zeros((2, 4, 2, 3), np.float32)}))
    assert not ClipDataModule(cfg, fields=("motion",))._use_memory("train")


def test_the_shuffle_buffer_is_bounded_in_bytes_and_resumption_stays_exact(tmp_path, monkeypatch):
    clips = write_clips(tmp_path / "clips", n=12, per_shard=4)
    paths = clip_shard_urls(clips, "train")
    one = record_bytes(next(iter_shard(paths[0], ("motion", "keyframe"))))
    held = []
    original = ShardStream._shuffled

    def spy(self, records, rng):
        def counted():
            for i, r in enumerate(records):
                held.append(i)
                yield r
        out_count = 0
        for out in original(self, counted(), rng):
            held[-1] = len(held) - out_count  # records taken in minus records given out so far
            out_count += 1
            yield out

    monkeypatch.setattr(ShardStream, "_shuffled", spy)
    stream = ShardStream(paths, ("motion", "keyframe"), 0, True, batch_size=2, buffer_bytes=3 * one)
    list(itertools.islice(iter(stream), 12))
    assert max(held) <= 3  # never more than buffer_bytes of records (1000 records before, whatever their size)
    monkeypatch.setattr(ShardStream, "_shuffled", original)
    full = [r["key"] for r in itertools.islice(iter(ShardStream(paths, ("motion",), 0, True, 2, 0, buffer_bytes=3 * one)), 20)]
    resumed = ShardStream(paths, ("motion",), 0, True, 2, 4, buffer_bytes=3 * one)
    assert [r["key"] for r in itertools.islice(iter(resumed), 12)] == full[8:]
    assert full[:12] != sorted(full[:12])  # it does shuffle


def _old_keyframe_items(paths):
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            out += [(m.name.partition(".")[0], str(path), m.offset_data, m.size) for m in tar if m.name.endswith(KEYFRAME_SUFFIX)]
    return out


def test_each_rank_indexes_only_its_shards_and_together_they_are_the_whole(tmp_path, tiny_cfg_factory, monkeypatch):
    clips = write_clips(tmp_path / "clips", n=8, per_shard=2)
    paths = clip_shard_urls(clips, "train")
    whole = build_index(paths, None, "train")
    assert [(i.key, i.path, i.offset, i.size) for i in whole] == _old_keyframe_items(paths)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    cfg = tiny_cfg_factory(f"paths.clips={clips}")
    seen = []
    for rank in range(2):
        opened.clear()
        dm = ImageDataModule(cfg, 8, batch_size=2, images=False)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=0, accumulate_grad_batches=1)
        index = dm.dataset("train").items
        assert sorted(set(opened)) == sorted(paths[rank::2])  # only this rank's tar headers are read
        seen += [i.key for i in index]
        batch = next(iter(dm.train_loader()))
        assert set(batch["key"]) <= {i.key for i in index}
    assert sorted(seen) == sorted(i.key for i in whole)
    assert whole.nbytes() < 120 * len(whole) + 1000


def test_each_lm_worker_tokenizes_only_its_share_of_the_text_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(7)) + "\n")
    (tmp_path / "b.txt").write_text("para 0\n\n\npara 1\nmore\n\n  \n\npara 2\n")
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]
    calls: list[str] = []

    def encode(text):
        calls.append(text)
        return [len(text)]

    whole = read_text_files(files, encode)
    assert calls == [f"doc {i}" for i in range(7)] + ["para 0", "para 1\nmore", "para 2"]  # as the old split("\n\n")
    parts = []
    for part in range(3):
        calls.clear()
        parts.append(read_text_files(files, encode, part, 3))
        assert len(calls) == len(parts[-1]) == len(whole[part::3])  # encode ran on this share only
    assert [d for p in parts for d in p] == [d for part in range(3) for d in whole[part::3]]


@pytest.mark.parametrize("block", [1, 3, 1 << 20])
def test_paragraphs_streamed_in_blocks_split_as_the_whole_text(tmp_path, block):
    from videolavit.data.lm_data import _paragraphs

    text = "a\n\n\nb\n\nc\r\n\r\nd\n\n\n\ne \n \n\nf"
    (tmp_path / "t.txt").write_bytes(text.encode())
    assert list(_paragraphs(tmp_path / "t.txt", block)) == (tmp_path / "t.txt").read_text().split("\n\n")
