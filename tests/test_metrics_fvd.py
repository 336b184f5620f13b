"""FVD: the Fréchet distance itself (analytic cases, scipy agreement) and the I3D TorchScript loading contract."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.metrics import FrechetVideoDistance, frechet_distance, metric_name


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch-fid's reference: unbiased covariances, scipy sqrtm of Σ1Σ2."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class LinearExtractor:
    """Features linear in the pixels, so a pixel shift is an exact feature shift with equal covariances."""

    extractor_name = "corpus"

    def __init__(self, num_pixels: int, num_features: int, seed: int = 0):
        self.weight = torch.randn(num_pixels, num_features, generator=torch.Generator().manual_seed(seed))
        self.num_features = num_features

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        return videos.flatten(1).double() @ self.weight.double()


def random_videos(n: int, seed: int, high: int = 200) -> torch.Tensor:
    return torch.randint(0, high, (n, 3, 2, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_identical_sets_give_zero():
    extractor = LinearExtractor(3 * 2 * 4 * 4, 8)
    fvd = FrechetVideoDistance(extractor)
    videos = random_videos(64, seed=1)
    fvd.update(videos, real=True)
    fvd.update(videos, real=False)
    scale = float(torch.trace(torch.cov(extractor(videos).double().T)))
    assert abs(float(fvd.compute())) < 1e-9 * scale


def test_gaussian_shift_gives_squared_mean_distance():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    sigma = a @ a.T + 0.1 * torch.eye(12, dtype=torch.float64)
    mu = torch.randn(12, generator=gen, dtype=torch.float64)
    delta = torch.randn(12, generator=gen, dtype=torch.float64)
    assert float(frechet_distance(mu, sigma, mu + delta, sigma)) == pytest.approx(float(delta.square().sum()), rel=1e-9)


def test_pixel_shift_through_metric_gives_analytic_distance():
    extractor = LinearExtractor(3 * 2 * 4 * 4, 6)
    real = random_videos(50, seed=2)
    fake = real + 40  # no uint8 overflow: real < 200
    fvd = FrechetVideoDistance(extractor)
    fvd.update(real, real=True)
    fvd.update(fake, real=False)
    delta = 40 * extractor.weight.double().sum(0)  # features shift by 40·1ᵀW, covariances are equal
    assert float(fvd.compute()) == pytest.approx(float(delta.square().sum()), rel=1e-8)


def test_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24))
    y = rng.normal(size=(250, 24)) @ rng.normal(scale=0.4, size=(24, 24)) + 0.3
    ours = frechet_distance(
        torch.from_numpy(x.mean(0)), torch.from_numpy(np.cov(x, rowvar=False)),
        torch.from_numpy(y.mean(0)), torch.from_numpy(np.cov(y, rowvar=False)),
    )
    assert float(ours) == pytest.approx(scipy_fid(x, y), rel=1e-6)


def test_metric_uses_unbiased_covariance_like_the_scipy_reference():
    extractor = LinearExtractor(3 * 2 * 4 * 4, 10, seed=3)
    real, fake = random_videos(40, seed=4), random_videos(30, seed=5, high=120)
    fvd = FrechetVideoDistance(extractor)
    for i in range(0, 40, 16):  # several updates accumulate like one
        fvd.update(real[i : i + 16], real=True)
    fvd.update(fake, real=False)
    reference = scipy_fid(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert float(fvd.compute()) == pytest.approx(reference, rel=1e-6)


def test_bad_inputs_fail_with_clear_errors():
    fvd = FrechetVideoDistance(LinearExtractor(3 * 2 * 4 * 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        fvd.update(torch.rand(2, 3, 2, 4, 4), real=True)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        fvd.update(torch.zeros(2, 2, 4, 4, 3, dtype=torch.uint8), real=True)
    with pytest.raises(ValueError, match="real=True or real=False"):
        fvd.update(random_videos(2, 0), real="yes")
    fvd.update(random_videos(1, 0), real=True)
    fvd.update(random_videos(4, 1), real=False)
    with pytest.raises(ValueError, match="at least 2 real"):
        fvd.compute()
    with pytest.raises(ConfigError, match="i3d:PATH"):
        FrechetVideoDistance("clip:/somewhere")


def test_num_features_is_inferred_from_a_probe_clip():
    fvd = FrechetVideoDistance(lambda v: v.float().mean(dim=(2, 3, 4)))  # [B, 3]
    assert fvd.num_features == 3
    assert metric_name("t2v/fvd", fvd) == "t2v/fvd_custom"


def test_real_statistics_survive_reset_when_asked():
    extractor = LinearExtractor(3 * 2 * 4 * 4, 4)
    fvd = FrechetVideoDistance(extractor, reset_real_features=False)
    fvd.update(random_videos(20, 6), real=True)
    fvd.update(random_videos(20, 7), real=False)
    first = float(fvd.compute())
    fvd.reset()
    assert int(fvd.real_n) == 20 and int(fvd.fake_n) == 0
    fvd.update(random_videos(20, 7), real=False)
    assert float(fvd.compute()) == pytest.approx(first, rel=1e-9)


class RecordingI3D(nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: same forward signature, records what it receives."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 400)
        self.register_buffer("flags", torch.zeros(3, dtype=torch.long))  # rescale, resize, return_features
        self.register_buffer("last_shape", torch.zeros(5, dtype=torch.long))
        self.register_buffer("saw_uint8", torch.zeros(1, dtype=torch.long))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        self.flags[0] = int(rescale)
        self.flags[1] = int(resize)
        self.flags[2] = int(return_features)
        for i in range(5):
            self.last_shape[i] = x.shape[i]
        self.saw_uint8[0] = int(x.dtype == torch.uint8)
        y = x.float()
        if rescale:
            y = y / 255.0 * 2 - 1
        frames = y.mean(dim=[3, 4]).transpose(1, 2)  # [B, T, 3]
        out = self.proj(frames).mean(1)  # [B, 400]
        if not return_features:
            out = out.softmax(-1)
        return out


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(RecordingI3D()).save(str(path))
    return path


def test_i3d_torchscript_is_called_with_the_stylegan_v_protocol(i3d_path):
    fvd = FrechetVideoDistance(f"i3d:{i3d_path}")
    assert fvd.num_features == 400 and metric_name("t2v/fvd", fvd) == "t2v/fvd_i3d"
    videos = torch.randint(0, 256, (3, 3, 20, 8, 10), dtype=torch.uint8)  # 20 frames: only the first 16 are used
    features = fvd.extract(videos)
    detector = fvd.extractor
    assert detector.flags.tolist() == [1, 1, 1]
    assert detector.last_shape.tolist() == [3, 3, 16, 8, 10]
    assert int(detector.saw_uint8) == 1
    assert features.shape == (3, 400) and features.dtype == torch.float64
    expected = detector(videos[:, :, :16], rescale=True, resize=True, return_features=True).double()
    torch.testing.assert_close(features, expected)
    fvd.update(videos, real=True)
    fvd.update(videos.flip(0), real=False)
    assert float(fvd.compute()) == pytest.approx(0.0, abs=1e-6)
    protocol = fvd.protocol()
    assert protocol["weights_sha256"] == hashlib.sha256(i3d_path.read_bytes()).hexdigest()
    assert protocol["num_frames"] == 16 and protocol["n_real"] == 3


def test_i3d_needs_sixteen_frames(i3d_path):
    fvd = FrechetVideoDistance(f"i3d:{i3d_path}")
    with pytest.raises(ValueError, match="at least 16 frames"):
        fvd.update(torch.zeros(2, 3, 15, 8, 8, dtype=torch.uint8), real=True)


def test_missing_i3d_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    with pytest.raises(MissingArtifactError, match=str(missing)):
        FrechetVideoDistance(f"i3d:{missing}")
    not_script = tmp_path / "junk.pt"
    not_script.write_bytes(b"not a torchscript archive")
    with pytest.raises(MissingArtifactError, match="not a TorchScript"):
        FrechetVideoDistance(f"i3d:{not_script}")
