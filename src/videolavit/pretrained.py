"""Local Hugging Face folders, loaded safely: never downloaded, never running their own code, pickles as tensors only.

Every transformers ``from_pretrained`` of the project passes :data:`LOCAL` (``local_files_only=True``,
``trust_remote_code=False``): a folder whose config names its own classes (``auto_map``) is refused, neither imported
nor prompted for (transformers otherwise asks "run the custom code? [y/N]" on a terminal, and ``y`` runs it). A
``.bin`` is read by transformers with ``torch.load(weights_only=True)`` only; a ``.safetensors`` beside it wins.
:func:`load_error` turns what transformers raises into one message naming the folder and the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from videolavit.errors import (
    ConfigError,
    MissingArtifactError,
    UnsafeCheckpointError,
    VideolavitError,
)

LOCAL = {"local_files_only": True, "trust_remote_code": False}
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def load_error(exc: BaseException, directory: str | Path, what: str) -> VideolavitError:
    """The project's error for ``exc`` raised while transformers loaded ``what`` (a config key) from ``directory``."""
    directory = Path(directory)
    text = str(exc)
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    if type(exc).__name__ == "UnpicklingError" or "weights_only" in text or "Weights only load failed" in text:
        files = sorted({p.name for pattern in PICKLES for p in directory.glob(pattern)}) or ["its pickle file"]
        return UnsafeCheckpointError(
            f"{what} '{directory}': {', '.join(files)} holds more than tensors, so it was refused unread "
            "(pickles are loaded with torch.load(weights_only=True) only; nothing in it ran). "
            "Save the model as safetensors (save_pretrained's default)"
        )
    remote = auto_map_files(directory)
    if remote and ("custom code" in text or "trust_remote_code" in text):
        return ConfigError(
            f"{what} '{directory}': {', '.join(remote)} asks to run the folder's own Python code (auto_map); "
            "this project never runs a model folder's code (trust_remote_code=False). Use a model type transformers "
            "ships (its config's model_type), or convert the weights into one"
        )
    return MissingArtifactError(f"cannot load {what} from '{directory}': {first}")


def auto_map_files(directory: str | Path) -> list[str]:
    """The config files of ``directory`` that carry an ``auto_map`` (classes defined by the folder's own code)."""
    found = []
    for name in CONFIGS:
        path = Path(directory) / name
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(str(path))
    return found
