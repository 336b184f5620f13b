import pytest

from videolavit.vocab import IMAGE, MOTION, PAPER_VOCAB, TEXT, Segment, Vocab


def test_paper_ids_match_the_official_code():
    v = PAPER_VOCAB
    assert (v.img_start, v.img_end) == (32000, 32001)
    assert (v.visual_range().start, v.visual_range().stop - 1) == (32002, 48385)
    assert (v.mov_start, v.mov_end) == (48386, 48387)
    assert (v.motion_range().start, v.motion_range().stop - 1) == (48388, 49411)
    assert v.size == 49412
    assert v.special_ids == {"[IMG]": 32000, "[/IMG]": 32001, "[MOV]": 48386, "[/MOV]": 48387}
    # the official code: LLM id = visual code + 32002; motion id = code + 32000 + 16384 + 4
    assert v.visual_ids([0, 16383]) == [32002, 48385]
    assert v.motion_ids([0, 1023]) == [48388, 49411]


def test_modality_of_each_range():
    v = PAPER_VOCAB
    assert [v.modality(i) for i in (0, 31999, 32000, 32002, 48385, 48386, 48388, 49411)] == [
        TEXT, TEXT, IMAGE, IMAGE, IMAGE, MOTION, MOTION, MOTION,
    ]
    for bad in (49412, -1, -100):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            v.modality(bad)


def test_video_build_parse_round_trip():
    v = PAPER_VOCAB
    clips = [([5, 0, 16383], list(range(135))), ([7], [1023] * 135)]
    text = [1, 450, 3681]
    ids = text + v.video_span(clips) + [2]
    assert len(ids) == 3 + (3 + 135 + 4) + (1 + 135 + 4) + 1
    segments = v.parse(ids)
    assert segments == [
        Segment(TEXT, tuple(text)),
        Segment(IMAGE, (5, 0, 16383)),
        Segment(MOTION, tuple(range(135))),
        Segment(IMAGE, (7,)),
        Segment(MOTION, (1023,) * 135),
        Segment(TEXT, (2,)),
    ]


def test_tiny_vocab_layout_and_round_trip():
    v = Vocab(text_size=300, visual_codes=64, motion_codes=32)
    assert (v.img_start, v.visual_offset, v.mov_start, v.motion_offset, v.size) == (300, 302, 366, 368, 400)
    ids = v.clip_span(range(64), range(32))
    assert [s.values for s in v.parse(ids)] == [tuple(range(64)), tuple(range(32))]


def test_unterminated_span_is_returned_as_far_as_it_goes():
    v = PAPER_VOCAB
    segs = v.parse([10, v.img_start, *v.visual_ids([3, 4])])
    assert segs == [Segment(TEXT, (10,)), Segment(IMAGE, (3, 4))]


@pytest.mark.parametrize(
    "ids, message",
    [
        ([PAPER_VOCAB.img_start, 48388, PAPER_VOCAB.img_end], "not a image code"),  # a motion id inside [IMG]
        ([PAPER_VOCAB.img_end], "no opening token"),
        ([5, 32005], "outside any"),
        ([5, 49412], "outside the vocabulary"),
    ],
)
def test_parse_rejects_malformed_sequences(ids, message):
    with pytest.raises(ValueError, match=message):
        PAPER_VOCAB.parse(ids)


def test_codes_out_of_range_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="visual code 16384"):
        PAPER_VOCAB.visual_ids([16384])
    with pytest.raises(ValueError, match="motion code -1"):
        PAPER_VOCAB.motion_ids([-1])
    with pytest.raises(ValueError, match="text_size"):
        Vocab(text_size=0, visual_codes=1, motion_codes=1)
