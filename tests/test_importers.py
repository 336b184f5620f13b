"""Importers: each real dataset layout → the corpus manifest; missing media are listed, malformed files are errors."""

import json
from pathlib import Path

import pytest

from videolavit.data.importers import import_dataset, safe_id, write_imported
from videolavit.data.manifest import read_instruct, read_manifest, read_meta
from videolavit.errors import ConfigError, CorpusError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")  # importers only check that media exist; decoding is the decompose stage's job
    return path


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_webvid_csv_finds_videos_in_page_dirs_and_lists_missing(tmp_path):
    media = tmp_path / "videos"
    _touch(media / "000001_000050" / "1066692580.mp4")
    _touch(media / "31353427.mp4")
    csv = tmp_path / "results_2M_val.csv"
    csv.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1066692580,https://x/1.mp4,PT00H00M11S,000001_000050,\"Aerial shot of a lake, sunset\"\n"
        "31353427,https://x/2.mp4,PT00H00M20S,000051_000100,Ducks swimming\n"
        "99,https://x/3.mp4,PT00H00M05S,000001_000050,Missing clip\n"
    )
    result = import_dataset("webvid", str(csv), str(media))
    samples = result.samples["val"]  # the file name says val
    assert [s.id for s in samples] == ["1066692580", "31353427"]
    assert samples[0].caption == "Aerial shot of a lake, sunset" and samples[0].attributes["duration"] == 11.0
    assert Path(samples[1].path).is_absolute() and Path(samples[1].path).is_file()
    assert [m["id"] for m in result.missing] == ["99"]

    counts = write_imported(tmp_path / "corpus", result)
    assert counts["val_videos"] == 2 and counts["missing_media"] == 1
    assert read_manifest(tmp_path / "corpus", "val")[1].caption == "Ducks swimming"
    missing = [json.loads(x) for x in (tmp_path / "corpus" / "missing.jsonl").read_text().splitlines()]
    assert missing[0]["id"] == "99" and any(e.endswith("000001_000050/99.mp4") for e in missing[0]["expected"])


def test_webvid_csv_without_required_columns_is_an_error(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("id,url\n1,x\n")
    with pytest.raises(CorpusError, match=r"bad.csv: not a WebVid CSV, missing column\(s\) \['name', 'videoid'\]"):
        import_dataset("webvid", str(csv), str(tmp_path))


def test_msrvtt_json_uses_its_own_splits_and_keeps_all_captions(tmp_path):
    for v in ("video0", "video1", "video2"):
        _touch(tmp_path / f"{v}.mp4")
    ann = _json(tmp_path / "train_val_videodatainfo.json", {
        "videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video1", "split": "validate"},
                   {"video_id": "video2", "split": "test"}, {"video_id": "video3", "split": "train"}],
        "sentences": [{"video_id": "video0", "caption": "a man cooks"}, {"video_id": "video0", "caption": "someone cooks"},
                      {"video_id": "video2", "caption": "a cat sleeps"}],
    })
    result = import_dataset("msrvtt", str(ann), str(tmp_path))
    assert [s.id for s in result.samples["train"]] == ["video0"]
    assert [s.id for s in result.samples["val"]] == ["video1"] and result.samples["val"][0].caption == ""
    assert result.samples["test"][0].caption == "a cat sleeps"
    assert result.samples["train"][0].attributes["captions"] == ["a man cooks", "someone cooks"]
    assert [m["id"] for m in result.missing] == ["video3"]
    forced = import_dataset("msrvtt", str(ann), str(tmp_path), split="test")
    assert len(forced.samples["test"]) == 3


def test_msrvtt_qa_list_groups_questions_per_video(tmp_path):
    _touch(tmp_path / "media" / "video7010.mp4")
    ann = _json(tmp_path / "test_qa.json", [
        {"id": 0, "video_id": 7010, "question": "what is a man doing?", "answer": "cooking"},
        {"id": 1, "video_id": 7010, "question": "who is cooking?", "answer": "man"},
        {"id": 2, "video_id": 7011, "question": "what plays?", "answer": "guitar"},
    ])
    result = import_dataset("msrvtt_qa", str(ann), str(tmp_path / "media"))
    (sample,) = result.samples["test"]
    assert [(q.question, q.answer, q.type) for q in sample.qa] == [
        ("what is a man doing?", "cooking", "other"), ("who is cooking?", "man", "other")]
    assert [c.conversations[0]["value"] for c in result.conversations] == ["<video>\nwhat is a man doing?", "<video>\nwho is cooking?"]
    assert result.conversations[1].conversations[1] == {"from": "gpt", "value": "man"}
    assert len(result.missing) == 1


def test_msvd_qa_video_names_and_malformed_entries(tmp_path):
    _touch(tmp_path / "-4wsuPCjDBc_5_15.avi")
    ann = _json(tmp_path / "msvd_train_qa.json", [{"video": "-4wsuPCjDBc_5_15.avi", "question": "who sings?", "answer": "woman"}])
    result = import_dataset("msvd_qa", str(ann))  # media_dir defaults to the annotation's folder
    assert result.samples["train"][0].id == "-4wsuPCjDBc_5_15" and result.samples["train"][0].qa[0].answer == "woman"
    bad = _json(tmp_path / "bad_qa.json", [{"video_id": 1, "question": "q?", "answer": "a"}, {"video_id": 2, "answer": "b"}])
    with pytest.raises(CorpusError, match=r"bad_qa.json: entry 1 has no 'question'"):
        import_dataset("msvd_qa", str(bad))
    with pytest.raises(CorpusError, match="expected a JSON list"):
        import_dataset("msvd_qa", str(_json(tmp_path / "obj.json", {"a": 1})))


def test_videochatgpt_eval_pair_is_joined_by_question_id_not_position(tmp_path):
    folder = tmp_path / "MSVD_Zero_Shot_QA"
    _touch(folder / "videos" / "v_abc.mp4")
    _touch(folder / "videos" / "xyz.mp4")
    _json(folder / "test_q.json", [
        {"video_name": "abc", "question": "what moves?", "question_id": "v_abc_0"},
        {"video_name": "xyz", "question": "what color?", "question_id": "v_xyz_1"},
    ])
    _json(folder / "test_a.json", [  # deliberately in the other order
        {"answer": "red", "type": 4, "question_id": "v_xyz_1"},
        {"answer": "car", "type": 0, "question_id": "v_abc_0"},
    ])
    for path in (folder, folder / "test_q.json", folder / "test_a.json"):
        result = import_dataset("msvd_qa", str(path), str(folder / "videos"))
        qa = {q.question: (q.answer, q.type) for s in result.samples["test"] for q in s.qa}
        assert qa == {"what moves?": ("car", "motion"), "what color?": ("red", "other")}
    _json(folder / "test_a.json", [{"answer": "red", "type": 4, "question_id": "v_xyz_1"}])
    with pytest.raises(CorpusError, match=r"1 question_id\(s\) have no answer in test_a.json \(first: v_abc_0\)"):
        import_dataset("msvd_qa", str(folder), str(folder / "videos"))


def test_llava_instructions_keep_turns_and_dedupe_images(tmp_path):
    _touch(tmp_path / "coco" / "train2017" / "000000033471.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat colors are the bus?"}, {"from": "gpt", "value": "White and red."},
             {"from": "human", "value": "Any people?"}, {"from": "gpt", "value": "Yes."}]
    ann = _json(tmp_path / "llava_v1_5_mix665k.json", [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": turns},
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": turns[:2]},
        {"id": "text_only", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "gone", "image": "coco/train2017/gone.jpg", "conversations": turns[:2]},
    ])
    result = import_dataset("llava", str(ann), str(tmp_path))
    (image,) = result.samples["train"]
    assert image.kind == "image" and image.id == "coco_train2017_000000033471"
    convs = result.conversations
    assert [c.id for c in convs] == ["000000033471", "000000033471_2", "text_only"]
    assert convs[0].conversations == turns and convs[0].media_id == image.id
    assert convs[2].media_id is None and convs[2].media_kind is None
    assert [m["id"] for m in result.missing] == ["coco/train2017/gone"]
    write_imported(tmp_path / "corpus", result, val_fraction=0.0)
    assert len(read_instruct(tmp_path / "corpus", "train")) == 3

    bad = _json(tmp_path / "bad.json", [{"id": "1", "image": "a.jpg", "conversations": [{"from": "user", "value": "x"}]}])
    with pytest.raises(CorpusError, match=r"bad.json: entry 0 turn 0"):
        import_dataset("llava", str(bad), str(tmp_path))


def test_videochatgpt_instructions_and_val_carve_out(tmp_path):
    for i in range(10):
        _touch(tmp_path / f"v_{i}.mp4")
    ann = _json(tmp_path / "VideoInstruct100K.json", [{"video_id": f"v_{i}", "q": f"what happens {j}?", "a": "a lot"}
                                                     for i in range(10) for j in range(2)])
    result = import_dataset("videochatgpt", str(ann), str(tmp_path))
    assert len(result.samples["train"]) == 10 and len(result.conversations) == 20
    assert result.conversations[1].id == "v_0_q1" and result.conversations[1].type is None
    write_imported(tmp_path / "corpus", result, seed=3, val_fraction=0.2)
    val = read_manifest(tmp_path / "corpus", "val")
    assert len(val) == 2 and len(read_manifest(tmp_path / "corpus", "train")) == 8
    assert {c.media_id for c in read_instruct(tmp_path / "corpus", "val")} == {s.id for s in val}
    assert read_meta(tmp_path / "corpus")["counts"]["val_videos"] == 2


def test_bad_import_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs corpus.import_path"):
        import_dataset("webvid", None)
    with pytest.raises(ConfigError, match="does not exist"):
        import_dataset("webvid", str(tmp_path / "nope.csv"))
    with pytest.raises(ConfigError, match="Valid: synthetic, webvid"):
        import_dataset("kinetics", str(tmp_path))
    (tmp_path / "a.json").write_text("[]")
    with pytest.raises(ConfigError, match="import_split 'dev'"):
        import_dataset("llava", str(tmp_path / "a.json"), split="dev")
    assert safe_id("coco/train2017/0001.jpg") == "coco_train2017_0001_jpg"
