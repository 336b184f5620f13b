"""Pretraining batches: packing keeps clip spans whole, both orders, EOS between samples, mixing, exact resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from videolavit.data.lm_data import (
    IGNORE_INDEX, MEDIA_FIRST, TEXT_FIRST, PretrainSamples, PretrainStream, collate_windows, fit_media, media_units,
    mixed_samples, pack_windows, pair_sample,
)
from videolavit.vocab import Vocab

VOCAB = Vocab(text_size=50, visual_codes=20, motion_codes=10)
BOS, EOS, PAD = 1, 2, 0


def _video(clips: int, keyframe: int = 3, motion: int = 4, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    rng = np.random.default_rng(seed)
    media, spans = [], []
    for _ in range(clips):
        clip = VOCAB.clip_span(rng.integers(0, 20, keyframe).tolist(), rng.integers(0, 10, motion).tolist())
        spans.append([len(media), len(media) + len(clip)])
        media += clip
    return media, spans


def _record(kind: str, clips: int = 2, caption_len: int = 5, seed: int = 0) -> dict:
    if kind == "video":
        media, spans = _video(clips, seed=seed)
    else:
        media, spans = VOCAB.image_span([seed % 20, 3, 4]), []
    caption = np.arange(10 + seed % 7, 10 + seed % 7 + caption_len, dtype=np.int32)
    return {"id": f"{kind}{seed}", "kind": kind, "media": np.asarray(media, dtype=np.int32),
            "units": media_units(media, spans, VOCAB), "caption": caption, "qa": []}


def _clip_spans_whole(window: list[int]) -> bool:
    """Every [IMG] is closed by [/IMG] and every [MOV] by [/MOV] inside the window, in order."""
    try:
        VOCAB.parse([t for t in window if t not in (BOS, EOS, PAD)])
    except ValueError:
        return False
    opened = [t for t in window if t in (VOCAB.img_start, VOCAB.mov_start)]
    closed = [t for t in window if t in (VOCAB.img_end, VOCAB.mov_end)]
    return len(opened) == len(closed) and window.count(VOCAB.mov_start) == window.count(VOCAB.mov_end)


def test_pair_sample_has_both_orders_and_bos_eos():
    r = _record("video", clips=2)
    media, caption = r["media"].tolist(), r["caption"].tolist()
    first = pair_sample(media, r["units"], caption, MEDIA_FIRST, BOS, EOS, 200)
    second = pair_sample(media, r["units"], caption, TEXT_FIRST, BOS, EOS, 200)
    assert first == [BOS, *media, *caption, EOS]
    assert second == [BOS, *caption, *media, EOS]


def test_a_video_longer_than_the_window_keeps_whole_clips():
    media, spans = _video(4)  # 4 clips of 2 + 3 + 2 + 4 = 11 ids
    units = media_units(media, spans, VOCAB)
    sample = pair_sample(media, units, [10, 11, 12], MEDIA_FIRST, BOS, EOS, seq_len=30)
    assert len(sample) <= 30
    kept = sample[1:-4]
    assert kept == media[:22]  # 2 whole clips fit in 30 − 2 − 3 ids; a third would be cut
    assert _clip_spans_whole(sample)
    assert fit_media(media, units, 10) == []  # not even one clip: nothing rather than half a clip


def test_image_units_are_found_without_clip_spans():
    frames = VOCAB.image_span([1, 2]) + VOCAB.image_span([3, 4, 5])
    assert media_units(frames, [], VOCAB) == [(0, 4), (4, 9)]


def test_packing_never_splits_a_clip_span_and_separates_samples_with_eos():
    records = [_record("video", clips=1 + i % 3, caption_len=3 + i % 5, seed=i) for i in range(30)]
    records += [_record("image", seed=i) for i in range(10)]
    samples = PretrainSamples(records, [], VOCAB, seq_len=64, bos=BOS, eos=EOS)
    stream = mixed_samples(samples, {"video_text": 0.6, "image_text": 0.3, "text": 0.1}, seed=0)
    windows = list(pack_windows((next(stream) for _ in range(300)), seq_len=64, lookahead=16))
    assert all(len(w) <= 64 for w in windows)
    assert all(_clip_spans_whole(w) for w in windows)
    assert all(w[0] == BOS and w[-1] == EOS for w in windows)  # whole samples only
    assert sum(w.count(BOS) for w in windows) == 300  # every sample once
    fill = sum(len(w) for w in windows) / (64 * len(windows))
    assert fill > 0.9  # the lookahead fills windows


def test_both_orders_and_every_source_appear_in_the_stream():
    records = [_record("video", seed=i) for i in range(6)] + [_record("image", seed=i) for i in range(6)]
    samples = PretrainSamples(records, [], VOCAB, seq_len=64, bos=BOS, eos=EOS)
    stream = mixed_samples(samples, {"video_text": 0.5, "image_text": 0.3, "text": 0.2}, seed=1)
    drawn = [next(stream) for _ in range(600)]
    kinds = Counter()
    for s in drawn:
        has_media = VOCAB.img_start in s
        if not has_media:
            kinds["text"] += 1
        elif s[1] in (VOCAB.img_start,):
            kinds["video_first" if VOCAB.mov_start in s else "image_first"] += 1
        else:
            kinds["video_last" if VOCAB.mov_start in s else "image_last"] += 1
    assert kinds["video_first"] > 100 and kinds["video_last"] > 100
    assert kinds["image_first"] > 50 and kinds["image_last"] > 50
    assert 0.15 < kinds["text"] / 600 < 0.25  # the configured weight


def test_both_orders_off_gives_media_first_only():
    samples = PretrainSamples([_record("video", seed=i) for i in range(4)], [], VOCAB, 64, BOS, EOS, both_orders=False)
    assert {order for _, order in samples.sources["video_text"]} == {MEDIA_FIRST}


def test_text_documents_longer_than_the_window_are_chunked():
    samples = PretrainSamples([], [list(range(3, 48))], VOCAB, seq_len=20, bos=BOS, eos=EOS)
    chunks = samples.sources["text"]
    assert all(len(c) <= 20 and c[0] == BOS and c[-1] == EOS for c in chunks)
    assert [t for c in chunks for t in c[1:-1]] == list(range(3, 48))


def test_collate_pads_right_and_ignores_padding():
    batch = collate_windows([[1, 5, 2], [1, 6, 7, 8, 2]], pad_id=PAD)
    assert batch["input_ids"].tolist() == [[1, 5, 2, 0, 0], [1, 6, 7, 8, 2]]
    assert batch["labels"].tolist() == [[1, 5, 2, IGNORE_INDEX, IGNORE_INDEX], [1, 6, 7, 8, 2]]
    assert batch["lengths"].tolist() == [3, 5]


def test_mix_without_data_for_any_weighted_source_is_an_error():
    from videolavit.errors import ConfigError

    samples = PretrainSamples([_record("image")], [], VOCAB, 64, BOS, EOS)
    with pytest.raises(ConfigError, match="no source"):
        next(mixed_samples(samples, {"video_text": 1.0, "image_text": 0.0, "text": 0.0}, seed=0))


def test_a_resumed_stream_continues_with_the_batches_an_uninterrupted_one_serves():
    records = [_record("video", clips=1 + i % 3, seed=i) for i in range(12)] + [_record("image", seed=i) for i in range(5)]

    def make(part, parts):
        return PretrainSamples(records[part::parts], [], VOCAB, 64, BOS, EOS)

    weights = {"video_text": 0.7, "image_text": 0.3}
    full = iter(PretrainStream(make, weights, seed=3, batch_size=2, seq_len=64, lookahead=8, pad_id=PAD))
    batches = [next(full)["input_ids"] for _ in range(7)]
    resumed = iter(PretrainStream(make, weights, seed=3, batch_size=2, seq_len=64, lookahead=8, pad_id=PAD, start_batch=4))
    for expected in batches[4:]:
        assert next(resumed)["input_ids"].tolist() == expected.tolist()
