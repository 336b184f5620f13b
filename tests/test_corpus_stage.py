"""The ``corpus`` stage end to end on a tiny synthetic corpus, and an import through the same entry point."""

import json

import pytest

from videolavit.config import load_config
from videolavit.data.manifest import read_instruct, read_manifest, read_meta
from videolavit.errors import ConfigError
from videolavit.stages import corpus


def _cfg(tmp_path, *overrides):
    return load_config(
        stage="corpus",
        overrides=[
            "corpus.train_videos=2", "corpus.val_videos=1", "corpus.test_videos=1", "corpus.images=3", "corpus.max_clips=2",
            "tracking.enabled=false", f"paths.corpus={tmp_path / 'corpus'}", f"paths.metrics={tmp_path / 'metrics'}",
            *overrides,
        ],
        params_file=None,
    )


def test_stage_builds_the_corpus_and_reports_metrics(tmp_path):
    out = tmp_path / "corpus"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "stale.mp4").write_bytes(b"old corpus")
    (out / "notes.txt").write_text("not part of a corpus")
    metrics = corpus.run(_cfg(tmp_path))

    assert not (out / "videos" / "stale.mp4").exists(), "the previous corpus is cleaned"
    assert (out / "notes.txt").read_text() == "not part of a corpus", "files that are not corpus outputs stay"
    assert not (tmp_path / ".corpus.building").exists()
    assert metrics["train_videos"] == 2 and metrics["val_videos"] == 1 and metrics["test_videos"] == 1
    assert metrics["train_images"] + metrics["val_images"] + metrics["test_images"] == 3
    assert metrics["qa_appearance"] > 0 and metrics["qa_motion"] > 0 and metrics["build_seconds"] > 0
    written = json.loads((tmp_path / "metrics" / "corpus.json").read_text())
    assert written["train_videos"] == 2
    assert read_meta(out)["counts"]["instruct_conversations"] == len(read_instruct(out)) == metrics["instruct_conversations"]
    videos = [s for s in read_manifest(out, "train") if s.kind == "video"]
    assert len(videos) == 2 and all(s.media_path(out).stat().st_size > 1000 for s in videos)


def test_stage_imports_a_dataset(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (media / "v1.mp4").write_bytes(b"x")
    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,contentUrl,duration,page_dir,name\nv1,http://u,PT00H00M11S,,a dog runs\nv2,http://u,PT5S,,gone\n")
    metrics = corpus.run(_cfg(tmp_path, "corpus.source=webvid", f"corpus.import_path={csv}", f"corpus.media_dir={media}"))
    assert metrics["train_videos"] == 1 and metrics["missing_media"] == 1
    assert read_manifest(tmp_path / "corpus", "train")[0].caption == "a dog runs"
    assert read_meta(tmp_path / "corpus")["source"] == "webvid"


def test_a_failing_import_leaves_the_previous_corpus(tmp_path):
    corpus.run(_cfg(tmp_path, "corpus.train_videos=1", "corpus.val_videos=0", "corpus.test_videos=0", "corpus.images=0"))
    before = (tmp_path / "corpus" / "train.jsonl").read_bytes()
    bad = tmp_path / "broken.json"
    bad.write_text("{oops")
    with pytest.raises(Exception, match="broken.json: not valid JSON"):
        corpus.run(_cfg(tmp_path, "corpus.source=llava", f"corpus.import_path={bad}"))
    assert (tmp_path / "corpus" / "train.jsonl").read_bytes() == before
    with pytest.raises(ConfigError, match="corpus.source 'youtube'"):
        corpus.run(_cfg(tmp_path, "corpus.source=youtube"))
    with pytest.raises(ConfigError, match="inside the corpus output"):
        corpus.run(_cfg(tmp_path, "corpus.source=webvid", f"corpus.import_path={bad}", f"corpus.media_dir={tmp_path / 'corpus' / 'videos'}"))
    assert (tmp_path / "corpus" / "train.jsonl").read_bytes() == before
