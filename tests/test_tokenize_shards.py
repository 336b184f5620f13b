"""Sharded tokenize (issue 14 item 5): ``tokenize.shard=i/n`` runs + the merge write the files one process writes;
streaming (a batch of clips and the videos it touches held, not a split); a missing part is named."""

from __future__ import annotations

import json

import pytest
from test_tokenize_stage import CLIPS, clip_arrays, write_corpus, write_tokenizers

from videolavit.data.manifest import iter_manifest_share, read_manifest, write_manifest
from videolavit.data.shards import ClipShardWriter
from videolavit.errors import MissingArtifactError

SHARES = 2


def reshard_clips(root) -> None:
    """The clips as a 2-share decompose writes them: share i's videos (manifest order) in <split>-<i>of2-*.tar."""
    for old in (root / "clips").glob("*.tar"):
        old.unlink()
    for split, videos in CLIPS.items():
        for i in range(SHARES):
            with ClipShardWriter(root / "clips", split, f"{i}of{SHARES}", clips_per_shard=2) as writer:
                for sample in iter_manifest_share(root / "corpus", split, i, SHARES):
                    for clip in videos.get(sample.id, []):
                        meta = {"video_id": sample.id, "clip": clip, "split": split, "caption": "", "start_time": 4.0 * clip}
                        writer.write({"key": f"{sample.id}__c{clip:03d}", **clip_arrays(sample.id, clip), "meta": meta})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize_shards")
    write_corpus(root)
    by_id = {s.id: s for s in read_manifest(root / "corpus", "train")}  # a video with clips in each share
    write_manifest(root / "corpus", "train", [by_id[i] for i in ("v0", "v_rejected", "img0", "v1", "v_lost", "img1")])
    reshard_clips(root)
    write_tokenizers(root / "models")
    assert {p.name.split("-")[1] for p in (root / "clips").glob("*.tar")} == {"0of2", "1of2"}
    return root


def config(root, out: str, *extra):
    from videolavit.config import load_config

    paths = [f"paths.{key}={root / key}" for key in ("corpus", "clips", "models", "metrics", "reports", "runs")]
    overrides = [*paths, f"paths.tokens={root / out}", "tracking.enabled=false", "tokenize.text_vocab_size=300",
                 "tokenize.text_min_frequency=1", "tokenize.batch_size=2", "tokenize.records_per_shard=2", *extra]
    return load_config(profile="tiny", overrides=overrides, params_file=None)


def outputs(tokens_dir) -> dict[str, bytes]:
    files = sorted(tokens_dir.glob("*.jsonl")) + [tokens_dir / "meta.json"]
    return {p.name: p.read_bytes() for p in files}


def test_two_shards_and_the_merge_write_what_one_process_writes(corpus):
    from videolavit.stages import tokenize

    one = tokenize.run(config(corpus, "one"))
    first = tokenize.run(config(corpus, "sharded", "tokenize.shard=1/2"))
    assert set(first) == {"units", "seconds"}  # shard 0's parts are not in yet: no merge
    assert not (corpus / "sharded" / "meta.json").exists()
    merged = tokenize.run(config(corpus, "sharded", "tokenize.shard=0/2"))  # the last shard merges
    want, got = outputs(corpus / "one"), outputs(corpus / "sharded")
    assert len(want) > 4 and got == want  # byte-identical token shards and meta
    assert {k: v for k, v in merged.items() if k != "seconds"} == {k: v for k, v in one.items() if k != "seconds"}
    records = [json.loads(line) for name, data in want.items() if name.startswith("train") for line in data.splitlines()]
    assert [r["id"] for r in records] == ["v0", "img0", "v1", "img1"]  # corpus order across the two shares
    assert not (corpus / "sharded" / "parts").exists() and not (corpus / "one" / "parts").exists()  # merged away


def test_the_merge_names_a_missing_part(corpus):
    from videolavit.stages import tokenize

    tokenize.run(config(corpus, "half", "tokenize.shard=0/2"))
    with pytest.raises(MissingArtifactError, match=r"train-1of2.*--shard i/n"):
        tokenize.run(config(corpus, "half", "tokenize.merge=true"))
    tokenize.run(config(corpus, "half", "tokenize.shard=1/2"))  # merges
    if not (corpus / "one" / "meta.json").is_file():
        tokenize.run(config(corpus, "one"))
    parts = {p.name: p.read_bytes() for p in sorted((corpus / "half").glob("*.jsonl"))}
    assert parts == {k: v for k, v in outputs(corpus / "one").items() if k.endswith(".jsonl")}


def test_videos_are_streamed_not_held_per_split(corpus, monkeypatch):
    """At most the videos of the batch being encoded are held (the old stage held every clip code of a split)."""
    from videolavit.stages import tokenize

    held = []
    real = tokenize.VideoTokens._finished

    def spy(self):
        held.append(len(self.pending))
        yield from real(self)

    monkeypatch.setattr(tokenize.VideoTokens, "_finished", spy)
    tokenize.run(config(corpus, "streamed", "tokenize.batch_size=1"))
    assert held and max(held) <= 1
