"""Fréchet Video Distance (Unterthiner et al. 2018) as a torchmetrics Metric, over I3D or any video feature extractor.

Protocol with ``"i3d:PATH"`` (StyleGAN-V's ``i3d_torchscript.pt``, the de-facto PyTorch FVD): uint8 clips
``[B, 3, T, H, W]`` in [0, 255], the first 16 frames, called with ``rescale=True, resize=True, return_features=True``
(the model scales to [-1, 1] and resizes to 224² itself) → 400-d pre-softmax logits. Clips shorter than 16 frames are
an error rather than padded, since padding changes the features.

Covariance normaliser: unbiased, ``1/(n-1)``, as TF-GAN's ``frechet_classifier_distance_from_activations`` (the
original FVD code) and torchmetrics' FID. StyleGAN-V uses ``1/n``; at 2048 clips the two differ by a factor
2048/2047 on Σ. FD from samples is biased in n: compare models only at equal sample counts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from videolavit.errors import ConfigError, MissingArtifactError

I3D_NUM_FEATURES = 400
I3D_NUM_FRAMES = 16
I3D_KWARGS = {"rescale": True, "resize": True, "return_features": True}
PROBE_SHAPE = (1, 3, 16, 64, 64)  # clip used to infer a custom extractor's feature size


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``‖μ1−μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1 Σ2)^½`` in float64."""
    mu1, sigma1, mu2, sigma2 = (t.to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    # Tr (Σ1Σ2)^½ = Tr (S Σ2 S)^½ with S = Σ1^½. S Σ2 S is symmetric PSD, so eigvalsh is exact where a general
    # sqrtm of the non-symmetric Σ1Σ2 can return complex noise or NaN on near-singular covariances.
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return distance.clamp(min=0)


def load_i3d(path: str | Path) -> torch.nn.Module:
    """The StyleGAN-V I3D TorchScript file at ``path``, on CPU, in eval mode; never downloads."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingArtifactError(
            f"I3D TorchScript file {path} does not exist: place StyleGAN-V's i3d_torchscript.pt there "
            "(nothing is downloaded at run time)"
        )
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise MissingArtifactError(f"{path} is not a TorchScript module: {exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FrechetVideoDistance(Metric):
    """FVD between real and generated clips; ``update(videos uint8 [B, 3, T, H, W], real=bool)``, ``compute()`` → scalar."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        feature_extractor: str | Callable[[Tensor], Tensor],
        num_features: int | None = None,
        reset_real_features: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reset_real_features = reset_real_features
        self.weights_sha256: str | None = None
        if isinstance(feature_extractor, (str, Path)):
            kind, _, path = str(feature_extractor).partition(":")
            if kind != "i3d" or not path:
                raise ConfigError(
                    f"feature_extractor {feature_extractor!r}: expected 'i3d:PATH' or a callable mapping uint8 "
                    "[B, 3, T, H, W] to [B, D]"
                )
            self.extractor = load_i3d(path)
            self.weights_sha256 = _sha256(Path(path).expanduser())
            self.extractor_name = "i3d"
            self.num_frames: int | None = I3D_NUM_FRAMES
            self._extractor_kwargs = dict(I3D_KWARGS)
            if num_features not in (None, I3D_NUM_FEATURES):
                raise ConfigError(f"I3D FVD features are {I3D_NUM_FEATURES}-d, got num_features={num_features}")
            num_features = I3D_NUM_FEATURES
        elif callable(feature_extractor):
            self.extractor = feature_extractor
            self.extractor_name = getattr(feature_extractor, "extractor_name", "custom")
            self.num_frames = None
            self._extractor_kwargs = {}
            num_features = num_features or getattr(feature_extractor, "num_features", None) or self._probe()
        else:
            raise ConfigError(f"feature_extractor must be 'i3d:PATH' or a callable, got {type(feature_extractor).__name__}")
        self.num_features = int(num_features)
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _probe(self) -> int:
        try:
            with torch.no_grad():
                features = self.extractor(torch.zeros(PROBE_SHAPE, dtype=torch.uint8))
        except Exception as exc:
            raise ConfigError(
                f"could not infer num_features by calling the extractor on a uint8 {list(PROBE_SHAPE)} probe clip "
                f"({type(exc).__name__}: {exc}); pass num_features="
            ) from None
        if features.ndim != 2:
            raise ConfigError(f"the feature extractor must return [B, D], got shape {list(features.shape)}")
        return features.shape[1]

    def extract(self, videos: Tensor) -> Tensor:
        """uint8 ``[B, 3, T, H, W]`` → float64 features ``[B, D]`` (the first 16 frames for I3D)."""
        if not isinstance(videos, Tensor) or videos.ndim != 5 or videos.shape[1] != 3:
            shape = list(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
            raise ValueError(f"FVD expects videos as a [B, 3, T, H, W] tensor (RGB, channels before time), got {shape}")
        if videos.dtype != torch.uint8:
            raise ValueError(
                f"FVD expects uint8 videos in [0, 255], got {videos.dtype}; convert [0, 1] floats with "
                "(x * 255).round().clamp(0, 255).to(torch.uint8)"
            )
        if self.num_frames is not None:
            if videos.shape[2] < self.num_frames:
                raise ValueError(f"I3D FVD needs at least {self.num_frames} frames per clip, got T={videos.shape[2]}")
            videos = videos[:, :, : self.num_frames]
        with torch.no_grad():
            features = self.extractor(videos, **self._extractor_kwargs)
        if features.shape != (videos.shape[0], self.num_features):
            raise ValueError(
                f"the {self.extractor_name} extractor returned shape {list(features.shape)}, "
                f"expected [{videos.shape[0]}, {self.num_features}]"
            )
        features = features.to(torch.float64)
        if not torch.isfinite(features).all():
            raise ValueError(f"the {self.extractor_name} extractor returned non-finite features")
        return features

    def update(self, videos: Tensor, real: bool) -> None:
        if not isinstance(real, bool):
            raise ValueError(f"FVD update needs real=True or real=False, got {real!r}")
        features = self.extract(videos)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features.T @ features)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + features.shape[0])

    def _mean_cov(self, side: str) -> tuple[Tensor, Tensor]:
        n = int(getattr(self, f"{side}_n"))
        if n < 2:
            raise ValueError(f"FVD needs at least 2 {side} videos for a covariance, got {n}")
        mean = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> Tensor:
        mu_real, sigma_real = self._mean_cov("real")
        mu_fake, sigma_fake = self._mean_cov("fake")
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        kept = {name: getattr(self, name) for name in ("real_sum", "real_outer", "real_n")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)

    def protocol(self) -> dict:
        """Every knob that affects comparability, to be logged beside the number."""
        return {
            "extractor": self.extractor_name,
            "weights_sha256": self.weights_sha256,
            "num_features": self.num_features,
            "num_frames": self.num_frames,
            "extractor_kwargs": dict(self._extractor_kwargs),
            "n_real": int(self.real_n),
            "n_fake": int(self.fake_n),
            "covariance": "unbiased (n-1)",
        }
