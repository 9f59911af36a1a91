"""Heatmap targets for top-down pose: MSRA, DARK and UDP Gaussians (NumPy).

All three place an unnormalised Gaussian (peak 1, standard deviation `sigma` heatmap pixels) per
joint on an `(h, w)` heatmap, `h = H / 4`, `w = W / 4` for an `(H, W)` input, and return NHWC
`(h, w, K)` float32 maps plus `(K,)` float32 target weights (visibility, zeroed when the
Gaussian window lies entirely off the heatmap). They differ in where the centre goes:

=========  ===========================================  =========================================
codec      centre (heatmap px) from input position x    support and source
=========  ===========================================  =========================================
``msra``   ``int(x / 4 + 0.5)`` (rounded to a pixel)     6 sigma + 1 window. HRNet
                                                         `lib/dataset/JointsDataset.py::generate_target`
``dark``   ``x / 4`` (sub-pixel)                        whole map. DarkPose (ilovepose/DarkPose)
                                                         `lib/dataset/JointsDataset.py::generate_target`
                                                         and `adjust_target_weight`
``udp``    ``x / ((W - 1) / (w - 1))`` (sub-pixel)      6 sigma + 1 window around the rounded
                                                         centre. UDP-Pose `master`
                                                         `lib/dataset/JointsDataset.py::generate_target`
=========  ===========================================  =========================================

The window test (`ul >= size or br < 0` -> weight 0) and the truncating `int()` of the
references are reproduced exactly. A Gaussian is separable, so each map is computed as an outer
product of per-axis profiles (equal to the references' `exp` of the summed squares to float32
rounding).

sigma: 2 at 256x192 and 3 at 384x288 (HRNet `experiments/coco/hrnet/w32_*.yaml`, `MODEL.SIGMA`);
`default_sigma` encodes that rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CODECS = ("msra", "dark", "udp")

__all__ = ["CODECS", "PoseCodec", "default_sigma", "heatmap_size", "encode_heatmaps", "msra_heatmaps",
           "dark_heatmaps", "udp_heatmaps"]


def default_sigma(input_size: Sequence[int]) -> float:
    """Gaussian sigma of the reference configs: 2 for inputs up to 256 px high, 3 above (384)."""
    return 2.0 if int(input_size[0]) <= 256 else 3.0


def heatmap_size(input_size: Sequence[int], stride: int = 4) -> tuple[int, int]:
    """`(h, w)` heatmap size of an `(H, W)` input (HRNet's stride-4 head)."""
    h, w = int(input_size[0]), int(input_size[1])
    if h % stride or w % stride:
        raise ValueError(f"input size {h}x{w} must be divisible by the heatmap stride {stride}")
    return h // stride, w // stride


def _gaussian_targets(mode: str, joints, visible, input_wh, heatmap_wh, sigma: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The three reference encoders in one vectorised routine (see the module table)."""
    joints = np.asarray(joints, np.float64).reshape(-1, 2)
    weight = np.asarray(visible).reshape(-1) > 0
    if len(weight) != len(joints):
        raise ValueError(f"joints {joints.shape} and visible {weight.shape} disagree")
    w, h = int(heatmap_wh[0]), int(heatmap_wh[1])
    if mode == "udp":
        stride = np.array([(input_wh[0] - 1.0) / (w - 1.0), (input_wh[1] - 1.0) / (h - 1.0)])
    else:
        stride = np.array([input_wh[0] / w, input_wh[1] / h], np.float64)
    tmp = sigma * 3
    mu = joints / stride  # sub-pixel heatmap position
    # reference window test on the rounded centre (msra, udp) or the raw one (dark):
    # ul = int(mu - tmp), br = int(mu + tmp + 1); off the map -> weight 0
    mu_ref = mu if mode == "dark" else np.trunc(mu + 0.5)
    ul = np.trunc(mu_ref - tmp)
    br = np.trunc(mu_ref + tmp + 1)
    weight &= (ul[:, 0] < w) & (ul[:, 1] < h) & (br[:, 0] >= 0) & (br[:, 1] >= 0)
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    if mode == "dark":
        centre = mu  # whole-map Gaussian
    else:
        size = 2 * tmp + 1
        centre = ul + size // 2  # the window's centre pixel (= mu_ref for integer 3 sigma)
        if mode == "udp":
            centre = centre + (mu - mu_ref)
    denom = 2.0 * sigma * sigma
    gx = np.exp(-np.square(xs[None, :] - centre[:, 0:1]) / denom)
    gy = np.exp(-np.square(ys[None, :] - centre[:, 1:2]) / denom)
    if mode != "dark":  # paste only inside [ul, br) (and the 6 sigma + 1 window)
        hi = np.minimum(br, ul + np.ceil(size))
        gx *= (xs[None, :] >= ul[:, 0:1]) & (xs[None, :] < hi[:, 0:1])
        gy *= (ys[None, :] >= ul[:, 1:2]) & (ys[None, :] < hi[:, 1:2])
    gx *= weight[:, None]
    heatmaps = np.einsum("ky,kx->yxk", gy.astype(np.float32), gx.astype(np.float32))
    return heatmaps, weight.astype(np.float32)


def msra_heatmaps(joints, visible, input_wh, heatmap_wh, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """HRNet targets: Gaussian on the nearest heatmap pixel `int(x / 4 + 0.5)`, 6 sigma + 1 window.

    Args:
      joints: `(K, 2)` joint positions in input-crop pixels; visible: `(K,)` (> 0 = labelled).
      input_wh: `(W, H)` of the crop; heatmap_wh: `(w, h)`.
      sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
      heatmaps `(h, w, K)` float32, target weights `(K,)` float32.
    """
    return _gaussian_targets("msra", joints, visible, input_wh, heatmap_wh, sigma)


def dark_heatmaps(joints, visible, input_wh, heatmap_wh, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """DARK targets: Gaussian at the sub-pixel position `x / stride`, over the whole heatmap.

    DarkPose maps the joints with a second affine to heatmap size (`trans_heatmap`), which equals
    `x_input / stride` for `get_affine_transform`; the weight test uses `int(mu -/+ tmp)` without
    rounding (`adjust_target_weight`). Arguments as `msra_heatmaps`.
    """
    return _gaussian_targets("dark", joints, visible, input_wh, heatmap_wh, sigma)


def udp_heatmaps(joints, visible, input_wh, heatmap_wh, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """UDP targets: stride `(W - 1) / (w - 1)`, sub-pixel centre inside the rounded 6 sigma + 1 window.

    UDP-Pose `master` `generate_target` (`target_type: gaussian`): the window is placed around
    `int(x / stride + 0.5)` as in HRNet, but the Gaussian centre inside it is moved by the
    sub-pixel remainder (`x0 += mu_x_ac - mu_x`). Arguments as `msra_heatmaps`.
    """
    return _gaussian_targets("udp", joints, visible, input_wh, heatmap_wh, sigma)


_ENCODERS = {"msra": msra_heatmaps, "dark": dark_heatmaps, "udp": udp_heatmaps}


def encode_heatmaps(codec: str, joints, visible, input_wh, heatmap_wh, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Dispatches to `msra_heatmaps`, `dark_heatmaps` or `udp_heatmaps` by codec name."""
    try:
        encoder = _ENCODERS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}") from None
    return encoder(joints, visible, input_wh, heatmap_wh, sigma)


class PoseCodec:
    """A codec (`'msra'`, `'dark'` or `'udp'`) at one input size: its warp and its targets.

    Training and evaluation share this object so that the crop warp, the heatmap targets and the
    decoding's inverse warp can never disagree.

    Args:
      name: codec name.
      input_size: `(H, W)` model input, e.g. `(256, 192)`.
      sigma: target Gaussian sigma in heatmap pixels (default `default_sigma(input_size)`).
      stride: input / heatmap size (4 for HRNet).
    """

    def __init__(self, name: str, input_size: Sequence[int] = (256, 192), sigma: float | None = None,
                 stride: int = 4):
        if name not in CODECS:
            raise ValueError(f"unknown codec {name!r}; expected one of {CODECS}")
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = heatmap_size(self.input_size, stride)
        self.sigma = float(default_sigma(self.input_size) if sigma is None else sigma)
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")

    @property
    def input_wh(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[0]

    @property
    def heatmap_wh(self) -> tuple[int, int]:
        return self.heatmap_size[1], self.heatmap_size[0]

    @property
    def aspect_ratio(self) -> float:
        """Input width / height (HRNet `aspect_ratio`)."""
        return self.input_size[1] / self.input_size[0]

    def warp(self, center, scale, rotation: float = 0.0, *, to_heatmap: bool = False) -> np.ndarray:
        """`(2, 3)` image -> input-crop (or -> heatmap) matrix of this codec."""
        from psa_jax.data.pose_transforms import warp_matrix  # local: keep this module light
        return warp_matrix(self.name, center, scale, rotation, self.heatmap_wh if to_heatmap else self.input_wh)

    def encode(self, joints, visible) -> tuple[np.ndarray, np.ndarray]:
        """`(K, 2)` joints in input-crop pixels + `(K,)` visibility -> `(h, w, K)` maps, `(K,)` weights."""
        return encode_heatmaps(self.name, joints, visible, self.input_wh, self.heatmap_wh, self.sigma)

    def __repr__(self) -> str:
        return f"PoseCodec({self.name!r}, input_size={self.input_size}, sigma={self.sigma})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PoseCodec) and (self.name, self.input_size, self.heatmap_size, self.sigma) == (
            other.name, other.input_size, other.heatmap_size, other.sigma)

    def __hash__(self) -> int:
        return hash((self.name, self.input_size, self.sigma))
