import pytest

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.data.text_tokenizer import load_text_tokenizer, train_bpe_tokenizer
from videolavit.vocab import Vocab

CAPTIONS = [
    "a red square moves left across a blue background",
    "a small green circle moves right",
    "question: what color is the square? answer: red",
    "the yellow triangle bounces up and down",
] * 25


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(CAPTIONS, vocab_size=320, out_dir=out)
    return out


def test_bpe_special_tokens_and_size(bpe_dir):
    tok = load_text_tokenizer(bpe_dir)
    assert (bpe_dir / "tokenizer.json").is_file()
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 320


def test_bpe_save_load_round_trip(bpe_dir, tmp_path):
    trained = train_bpe_tokenizer(CAPTIONS, vocab_size=320, out_dir=tmp_path)
    loaded = load_text_tokenizer(tmp_path)
    assert type(loaded) is type(trained)
    text = "a red circle moves left, then ünïcode ✓ and digits 123"
    ids = loaded(text).input_ids
    assert ids == trained(text).input_ids
    assert ids[0] == loaded.bos_token_id and ids[-1] != loaded.eos_token_id  # Llama-style: BOS, no EOS
    assert loaded.unk_token_id not in ids  # byte-level: every character is encodable
    assert loaded.decode(ids, skip_special_tokens=True) == text
    # merges were learned: a frequent caption takes far fewer ids than it has bytes
    assert len(loaded(CAPTIONS[0], add_special_tokens=False).input_ids) < len(CAPTIONS[0]) // 2


def test_text_ids_must_fit_the_vocabulary(bpe_dir):
    assert len(load_text_tokenizer(bpe_dir, text_size=Vocab(320, 16, 8).text_size)) == 320
    with pytest.raises(ConfigError, match="text_size"):
        load_text_tokenizer(bpe_dir, text_size=300)


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MissingArtifactError, match="does not exist"):
        load_text_tokenizer(tmp_path / "nope")
    with pytest.raises(MissingArtifactError, match="cannot load a text tokenizer"):
        load_text_tokenizer(tmp_path)


def test_bpe_rejects_a_vocabulary_smaller_than_the_byte_alphabet(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe_tokenizer(CAPTIONS, vocab_size=100, out_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        train_bpe_tokenizer(["", "  "], vocab_size=300, out_dir=tmp_path)
