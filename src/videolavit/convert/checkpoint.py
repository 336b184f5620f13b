"""Reading released weight files safely: plain tensor state dicts only, never an arbitrary pickle."""

from __future__ import annotations

import zipfile
from pathlib import Path

from videolavit.errors import MissingArtifactError, ReleaseFormatError


def read_state_dict(path: str | Path) -> dict:
    """``{name: tensor}`` from a ``.bin``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Anything else (a pickle that would build objects, a nested checkpoint, a non-tensor value) is a
    ReleaseFormatError naming the file; nothing in the file is executed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"released weights not found: '{path}'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors' own errors carry no file name
            raise ReleaseFormatError(f"'{path}' is not a readable safetensors file: {exc}") from None
    try:
        # weights_only: the restricted unpickler builds tensors and containers only, never calls a __reduce__.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReleaseFormatError(
            f"'{path}' is not a plain tensor state dict that torch.load(weights_only=True) accepts; refused "
            f"without running it ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(state, dict):
        raise ReleaseFormatError(f"'{path}' holds a {type(state).__name__}, not a state dict of tensors; refused")
    bad = [(k, type(v).__name__) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r}: {t}" for k, t in bad[:3])
        raise ReleaseFormatError(
            f"'{path}' is not a plain tensor state dict ({len(bad)} entries are not name → tensor, e.g. {shown}); refused"
        )
    return dict(state)
