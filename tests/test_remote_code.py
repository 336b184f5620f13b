"""A local model folder never runs code (issue 15 item 9): no remote-code prompt, no pickle payload.

Every transformers load passes ``trust_remote_code=False`` (and ``local_files_only=True``). Before, a folder whose
config has an ``auto_map`` made transformers ask "run the custom code? [y/N]" and ``y`` ran the folder's Python; a
malicious ``pytorch_model.bin`` ended in a raw ``UnpicklingError``. Each payload here would create a marker file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from videolavit.errors import ConfigError, UnsafeCheckpointError, VideolavitError

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64,
         "max_position_embeddings": 32}


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: the code a malicious checkpoint runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _evil_module(folder: Path, name: str, marker: Path) -> None:
    (folder / f"{name}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")


def _remote_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config asks for its own classes (an unknown model_type, auto_map to its modules)."""
    folder.mkdir()
    _evil_module(folder, "configuration_evil", marker)
    _evil_module(folder, "modeling_evil", marker)
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    return folder


def _pickle_model(folder: Path, marker: Path, config: dict) -> Path:
    """A known model type (with an auto_map beside it) whose only weights are a pickle with a payload."""
    folder.mkdir()
    _evil_module(folder, "modeling_evil", marker)
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, f)
    return folder


@pytest.fixture
def answer_yes(monkeypatch):
    """The user answers 'y' to any prompt (transformers' remote-code question included)."""
    monkeypatch.setattr("builtins.input", lambda *args: "y")


def test_the_lm_loader_runs_no_folder_code(tmp_path, answer_yes):
    from videolavit.models.lm import _load_pretrained

    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"lm\.model\.pretrained_path.*config\.json.*trust_remote_code=False"):
        _load_pretrained(str(_remote_code_model(tmp_path / "m", marker)), None, None)
    assert not marker.exists()


def test_a_malicious_bin_is_refused_naming_the_file_and_runs_nothing(tmp_path, answer_yes):
    from videolavit.models.lm import _load_pretrained

    marker = tmp_path / "ran"
    with pytest.raises(UnsafeCheckpointError, match=r"lm\.model\.pretrained_path.*pytorch_model\.bin.*refused"):
        _load_pretrained(str(_pickle_model(tmp_path / "m", marker, LLAMA)), None, None)
    assert not marker.exists()


def test_the_vision_teacher_loader_runs_no_folder_code(tmp_path, answer_yes):
    from videolavit.models.vision_encoder import load_vision_teacher

    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"visual_tokenizer\.model\.teacher_path.*auto_map"):
        load_vision_teacher(str(_remote_code_model(tmp_path / "m", marker)))
    clip_vision = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        load_vision_teacher(str(_pickle_model(tmp_path / "v", marker, clip_vision)))
    assert not marker.exists()


def test_the_text_tokenizer_loader_runs_no_folder_code(tmp_path, answer_yes):
    from videolavit.data.text_tokenizer import load_text_tokenizer

    marker = tmp_path / "ran"
    folder = tmp_path / "tok"
    folder.mkdir()
    _evil_module(folder, "tokenization_evil", marker)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    with pytest.raises(VideolavitError, match=r"tokenizer_config\.json.*trust_remote_code=False"):
        load_text_tokenizer(folder)
    assert not marker.exists()


def test_the_clip_metric_loader_runs_no_folder_code(tmp_path, answer_yes):
    from videolavit.metrics.clipsim import LocalCLIP

    marker = tmp_path / "ran"
    with pytest.raises(VideolavitError):
        LocalCLIP(_remote_code_model(tmp_path / "m", marker))
    assert not marker.exists()


def test_every_transformers_load_in_the_package_passes_local_and_no_remote_code():
    """A new call site cannot forget it: each ``.from_pretrained(`` of a transformers class passes ``**LOCAL``."""
    import re

    root = Path(__file__).resolve().parents[1] / "src" / "videolavit"
    missing = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if "transformers" not in text:
            continue
        for m in re.finditer(r"\b(Auto\w+|CLIP\w+|Llama\w+|PreTrained\w+)\.from_pretrained\(", text):
            depth, end = 1, m.end()
            while depth:  # the call's arguments, up to its own closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if "**LOCAL" not in text[m.end():end]:
                missing.append(f"{path.relative_to(root)}:{text[:m.start()].count(chr(10)) + 1} {text[m.start():end]}")
    assert missing == []
