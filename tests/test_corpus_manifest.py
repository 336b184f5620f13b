"""The manifest contract: round trips, and malformed files failing with the file and line in the message."""

import json

import pytest

from videolavit.data.manifest import (
    QA,
    Conversation,
    Sample,
    corpus_counts,
    read_instruct,
    read_manifest,
    read_meta,
    write_instruct,
    write_manifest,
    write_meta,
)
from videolavit.errors import CorpusError, MissingArtifactError


def _sample(i=0, kind="video"):
    return Sample(
        id=f"vid_{i:05d}",
        kind=kind,
        path=f"videos/vid_{i:05d}.mp4",
        caption="a red circle moves to the left over a striped background",
        qa=[QA("What color is the circle?", "red", "appearance"), QA("Which direction does the red circle move?", "left", "motion")],
        attributes={"shape": "circle", "color": "red", "objects": [{"shape": "circle"}]},
        clips=[{"direction": "left", "speed": "fast"}],
    )


def test_manifest_round_trip(tmp_path):
    samples = [_sample(0), _sample(1, kind="image")]
    write_manifest(tmp_path, "train", samples)
    assert read_manifest(tmp_path, "train") == samples
    line = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert list(line) == ["id", "kind", "path", "caption", "qa", "attributes", "clips"]
    assert samples[0].media_path(tmp_path) == tmp_path / "videos" / "vid_00000.mp4"
    assert Sample("a", "video", "/data/a.mp4").media_path(tmp_path).as_posix() == "/data/a.mp4"


def test_instruct_round_trip_and_split_filter(tmp_path):
    convs = [
        Conversation("vid_00000_q00", "vid_00000", "video", "train",
                     [{"from": "human", "value": "<video>\nWhich direction?"}, {"from": "gpt", "value": "left"}], "motion"),
        Conversation("chat_1", None, None, "test", [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]),
    ]
    write_instruct(tmp_path, convs)
    assert read_instruct(tmp_path) == convs
    assert [c.id for c in read_instruct(tmp_path, "test")] == ["chat_1"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"id": "a", "kind": "audio", "path": "a.wav"}', "'kind' must be one of"),
        ('{"id": "a", "kind": "video"}', "'path' must be a non-empty string"),
        ('{"id": "a", "kind": "video", "path": "a.mp4", "qa": [{"question": "q", "answer": "a", "type": "vibes"}]}',
         "qa[0].type"),
        ('[1, 2]', "must be a JSON object"),
    ],
)
def test_malformed_manifest_line_names_file_and_line(tmp_path, line, message):
    good = json.dumps(_sample().to_dict())
    (tmp_path / "val.jsonl").write_text(good + "\n\n" + line + "\n")
    with pytest.raises(CorpusError) as err:
        read_manifest(tmp_path, "val")
    assert "val.jsonl:3" in str(err.value)
    assert message in str(err.value)


def test_malformed_conversation_is_a_corpus_error(tmp_path):
    bad = {"id": "c", "media_id": "v", "media_kind": None, "split": "train", "conversations": [{"from": "human", "value": "x"}]}
    (tmp_path / "instruct.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(CorpusError, match=r"instruct.jsonl:1: 'media_id' and 'media_kind'"):
        read_instruct(tmp_path)


def test_missing_files_and_bad_split_are_clear_errors(tmp_path):
    with pytest.raises(MissingArtifactError, match="videolavit corpus"):
        read_manifest(tmp_path, "train")
    with pytest.raises(CorpusError, match="unknown split 'training'"):
        read_manifest(tmp_path, "training")
    with pytest.raises(CorpusError, match="duplicate sample id"):
        write_manifest(tmp_path, "train", [_sample(0), _sample(0)])
    (tmp_path / "meta.json").write_text("[]")
    with pytest.raises(CorpusError, match="meta.json"):
        read_meta(tmp_path)


def test_meta_and_counts(tmp_path):
    samples = {"train": [_sample(0), _sample(1, "image")], "val": [], "test": [_sample(2)]}
    counts = corpus_counts(samples, [])
    assert counts["train_videos"] == 1 and counts["train_images"] == 1 and counts["test_videos"] == 1
    assert counts["qa_appearance"] == 3 and counts["qa_motion"] == 3 and counts["qa_temporal"] == 0
    write_meta(tmp_path, {"source": "synthetic", "seed": 3, "counts": counts, "heldout": []})
    assert read_meta(tmp_path)["counts"] == counts
