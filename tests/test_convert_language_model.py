"""The released generation LM (a plain Llama over 49,412 ids), imported: logits of transformers 4.33.2 within 1e-4.

The goldens come from the transformers version the official code pins, run on the same seeded weights
(tests/fixtures/README.md); this test rebuilds the released ``language_model/`` folder from the seed and imports it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fixtures.released_weights import LLAMA_SMALL, llama_input_small, llama_state_small
from videolavit.cli import main
from videolavit.errors import ReleaseFormatError

GOLDENS = Path(__file__).parent / "fixtures" / "goldens"
GOLDEN = json.loads((GOLDENS / "language_model_small.json").read_text())


def _release(root: Path, state: dict | None = None) -> Path:
    folder = root / "language_model"
    folder.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], **LLAMA_SMALL, "torch_dtype": "float32",
              "transformers_version": "4.33.2", "pretraining_tp": 1, "rope_scaling": None, "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(config))
    state = llama_state_small() if state is None else state
    # transformers < 4.32 also saved the rotary buffers; the converter drops them
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    torch.save(state, folder / "pytorch_model.bin")
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(GOLDENS / "llama_tokenizer" / name, folder / name)
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = _release(tmp_path_factory.mktemp("release"))
    out = root / "converted"
    assert main(["import-official", str(root), "--out", str(out), "--parts", "language_model"]) == 0
    return out


def test_logits_match_the_official_transformers(imported):
    from videolavit.models.lm import build_lm
    from videolavit.vocab import PAPER_VOCAB

    model = build_lm(PAPER_VOCAB, pretrained_path=str(imported / "language_model"), dtype="float32").eval()
    assert model.get_input_embeddings().weight.shape[0] == PAPER_VOCAB.size  # 1:1, no resizing
    ids = llama_input_small()
    assert ids[0].tolist() == GOLDEN["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # [L, V]
    scale = GOLDEN["abs_max"]
    probe = logits[:, GOLDEN["probe_ids"]]
    assert (probe - torch.tensor(GOLDEN["probe_logits"])).abs().max() / scale < 1e-4
    assert (logits.logsumexp(-1) - torch.tensor(GOLDEN["logsumexp"])).abs().max() / scale < 1e-4
    assert logits.argmax(-1).tolist() == GOLDEN["argmax"]
    assert float(logits.abs().max()) == pytest.approx(scale, rel=1e-4)


def test_the_imported_lm_loads_as_this_platforms_lm_checkpoint(imported):
    """What generate and evaluate load (models/lm_checkpoint.py): the weights, the text tokenizer and vocab.json."""
    from videolavit.models.lm_checkpoint import load_lm_checkpoint
    from videolavit.vocab import PAPER_VOCAB

    model, tokenizer, vocab = load_lm_checkpoint(imported / "language_model", dtype="float32")
    assert vocab == PAPER_VOCAB and model.get_input_embeddings().weight.shape[0] == PAPER_VOCAB.size
    assert tokenizer("a red circle").input_ids[0] == tokenizer.bos_token_id
    info = json.loads((imported / "language_model" / "vocab.json").read_text())
    assert info["special_ids"]["[MOV]"] == 48386 and info["source"] == "import-official"


def test_the_slow_tokenizer_becomes_a_fast_one_with_the_same_ids(imported):
    from videolavit.data.text_tokenizer import load_text_tokenizer

    tokenizer = load_text_tokenizer(imported / "language_model", text_size=32000)
    gold = GOLDEN["tokenizer"]
    for text, ids, decoded in zip(gold["texts"], gold["ids"], gold["decoded"]):
        assert tokenizer(text).input_ids == ids, text
        # the slow tokenizer of 4.33 also drops one of the leading spaces it decodes; the text itself round-trips
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == decoded.strip()


def test_the_report_and_the_written_files(imported):
    folder = imported / "language_model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin"))
    part = {p["part"]: p for p in json.loads((imported / "import_report.json").read_text())["parts"]}
    assert part["language_model"]["status"] == "converted"
    assert part["motion_tokenizer"]["status"] == "skipped"  # not among --parts
    assert any("inv_freq" in n for n in part["language_model"]["notes"])
    assert any("tokenizer.json" in n and "NOT" not in n for n in part["language_model"]["notes"])


def test_a_tensor_of_the_wrong_shape_is_refused_with_its_name(tmp_path, capsys):
    state = llama_state_small()
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    root = _release(tmp_path, state)
    assert main(["import-official", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "model.layers.1.mlp.up_proj.weight" in err and "[3, 3]" in err
    assert not (tmp_path / "out" / "language_model").exists()  # nothing half-written is left to load


def test_a_part_asked_for_but_absent_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "release").mkdir()
    assert main(["import-official", str(tmp_path / "release"), "--out", str(tmp_path / "o"), "--parts", "language_model"]) == 2
    assert "language_model" in capsys.readouterr().err
    with pytest.raises(ReleaseFormatError, match="model_type"):
        from videolavit.convert.language_model import _read_config

        (tmp_path / "gpt").mkdir()
        (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        _read_config(tmp_path / "gpt")


def test_a_sharded_release_converts_to_safetensors_shards_with_the_same_logits(tmp_path):
    """The 7B release ships pytorch_model-0000k-of-0000n.bin shards and an index: each becomes a safetensors shard."""
    from videolavit.models.lm import build_lm
    from videolavit.vocab import PAPER_VOCAB

    root = _release(tmp_path / "release")
    folder = root / "language_model"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    (folder / "pytorch_model.bin").unlink()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, folder / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    assert main(["import-official", str(root), "--out", str(out)]) == 0
    written = sorted(p.name for p in (out / "language_model").glob("*.safetensors"))
    assert written == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    model = build_lm(PAPER_VOCAB, pretrained_path=str(out / "language_model"), dtype="float32").eval()
    with torch.no_grad():
        logits = model(input_ids=llama_input_small()).logits[0]
    assert logits.argmax(-1).tolist() == GOLDEN["argmax"]
    probe = logits[:, GOLDEN["probe_ids"]]
    assert (probe - torch.tensor(GOLDEN["probe_logits"])).abs().max() / GOLDEN["abs_max"] < 1e-4


def test_the_understanding_lm_converts_its_llama_and_reports_its_visual_input_as_not(tmp_path):
    """language_model_sft/ is the same Llama plus the tokenizers VideoLaVITLlamaModel builds inside it."""
    from videolavit.models.lm import build_lm
    from videolavit.vocab import PAPER_VOCAB

    state = llama_state_small()
    state["model.visual_tokenizer.vit_proj.weight"] = torch.zeros(32, 8)
    state["model.motion_tokenizer.encoder.in_proj.weight"] = torch.zeros(32, 2)
    root = _release(tmp_path / "release", state)
    (root / "language_model").rename(root / "language_model_sft")
    torch.save({"vit_proj.weight": torch.zeros(32, 8)}, root / "language_model_sft" / "visual_weight.bin")
    out = tmp_path / "out"
    assert main(["import-official", str(root), "--out", str(out)]) == 0
    part = {p["part"]: p for p in json.loads((out / "import_report.json").read_text())["parts"]}["understanding_lm"]
    assert part["status"] == "partial" and "vit_proj" in part["detail"]
    assert any("'model.visual_tokenizer.*'" in n for n in part["notes"])
    model = build_lm(PAPER_VOCAB, pretrained_path=str(out / "understanding_lm"), dtype="float32").eval()
    with torch.no_grad():
        assert model(input_ids=llama_input_small()).logits[0].argmax(-1).tolist() == GOLDEN["argmax"]
