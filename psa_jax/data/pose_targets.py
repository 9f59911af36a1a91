"""Heatmap targets for top-down pose: MSRA, DARK and UDP Gaussians, and the UDP combined target (NumPy).

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

``udp_combined``: the UDP *combined (offset) target* (UDP-Pose paper, Sec. 4.2; mmpose 0.x
`TopDownGenerateTarget(encoding='UDP', target_type='CombinedTarget')` `_udp_generate_target`,
mmpose 1.x `codecs.utils.generate_offset_heatmap`). Same warp and stride as ``udp``
(`(W - 1) / (w - 1)`); per joint k with heatmap position `mu = x / stride` and radius
`r = radius_factor * max(w, h)` (`radius_factor` 0.0546875, so r = 3.5 heatmap px at 256x192;
mmpose 0.x writes `factor * heatmap height`, 1.x `factor * max(W, H)`: equal for the portrait
inputs of every recipe), three maps:

* classification `C_k(p) = 1 if |mu - p|^2 <= r^2 else 0` (a binary disk, p = integer pixel);
* x offset `X_k(p) = C_k(p) * (mu_x - p_x) / r`; y offset `Y_k(p) = C_k(p) * (mu_y - p_y) / r`.

NHWC channel order is joint-major, as mmpose's `(K, 3, H, W) -> (3K, H, W)` reshape: channel
`3k` is `C_k`, `3k + 1` is `X_k`, `3k + 2` is `Y_k` (`target[..., 0::3]` are the classification
maps). Target weights are the visibility flags alone (both mmpose versions; a labelled joint whose
disk misses the heatmap keeps weight 1 and trains its classification map towards 0). Unlabelled
joints get all-zero maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CODECS = ("msra", "dark", "udp", "udp_combined")
UDP_CODECS = ("udp", "udp_combined")  # codecs with UDP's warp, stride (W - 1) / (w - 1) and inverse
UDP_RADIUS_FACTOR = 0.0546875  # mmpose `valid_radius_factor` / `radius_factor` default (UDP-Pose configs)

__all__ = ["CODECS", "UDP_CODECS", "UDP_RADIUS_FACTOR", "PoseCodec", "default_sigma", "heatmap_size",
           "channels_per_joint", "encode_heatmaps", "msra_heatmaps", "dark_heatmaps", "udp_heatmaps",
           "udp_combined_targets", "udp_combined_radius"]


def _check_codec(name: str) -> str:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; expected one of {CODECS}")
    return name


def channels_per_joint(codec: str) -> int:
    """Output channels per joint: 3 for 'udp_combined' (classification, x offset, y offset), else 1."""
    return 3 if _check_codec(codec) == "udp_combined" else 1


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


def udp_combined_radius(heatmap_wh, radius_factor: float = UDP_RADIUS_FACTOR) -> float:
    """Disk radius (heatmap px) of the combined target: `radius_factor * max(w, h)` (3.5 for 64x48)."""
    return float(radius_factor) * max(int(heatmap_wh[0]), int(heatmap_wh[1]))


def udp_combined_targets(joints, visible, input_wh, heatmap_wh, radius_factor: float = UDP_RADIUS_FACTOR
                         ) -> tuple[np.ndarray, np.ndarray]:
    """UDP combined (offset) targets: binary disk + x/y offsets per joint (see the module doc).

    Args:
      joints: `(K, 2)` joint positions in input-crop pixels; visible: `(K,)` (> 0 = labelled).
      input_wh: `(W, H)` of the crop; heatmap_wh: `(w, h)`.
      radius_factor: disk radius / `max(w, h)`.

    Returns:
      targets `(h, w, 3K)` float32, channel `3k + c` with c = 0 classification, 1 x offset,
      2 y offset (offsets in units of the radius); target weights `(K,)` float32 (visibility).
    """
    joints = np.asarray(joints, np.float64).reshape(-1, 2)
    weight = np.asarray(visible).reshape(-1) > 0
    if len(weight) != len(joints):
        raise ValueError(f"joints {joints.shape} and visible {weight.shape} disagree")
    if not radius_factor > 0:
        raise ValueError(f"radius_factor must be positive, got {radius_factor}")
    w, h = int(heatmap_wh[0]), int(heatmap_wh[1])
    stride = np.array([(input_wh[0] - 1.0) / (w - 1.0), (input_wh[1] - 1.0) / (h - 1.0)])
    mu = joints / stride  # (K, 2) sub-pixel heatmap position
    radius = udp_combined_radius(heatmap_wh, radius_factor)
    off_x = (mu[:, 0:1] - np.arange(w, dtype=np.float64)[None, :]) / radius  # (K, w)
    off_y = (mu[:, 1:2] - np.arange(h, dtype=np.float64)[None, :]) / radius  # (K, h)
    disk = (np.square(off_y)[:, :, None] + np.square(off_x)[:, None, :]) <= 1.0  # (K, h, w)
    disk &= weight[:, None, None]
    maps = np.stack([disk, disk * off_x[:, None, :], disk * off_y[:, :, None]], axis=-1)  # (K, h, w, 3)
    targets = np.ascontiguousarray(maps.transpose(1, 2, 0, 3).reshape(h, w, 3 * len(joints)), np.float32)
    return targets, weight.astype(np.float32)


_ENCODERS = {"msra": msra_heatmaps, "dark": dark_heatmaps, "udp": udp_heatmaps}


def encode_heatmaps(codec: str, joints, visible, input_wh, heatmap_wh, sigma: float, *,
                    radius_factor: float = UDP_RADIUS_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """Dispatches by codec name: the three Gaussian encoders (`sigma`) or `udp_combined_targets`
    (`radius_factor`; `sigma` unused)."""
    if _check_codec(codec) == "udp_combined":
        return udp_combined_targets(joints, visible, input_wh, heatmap_wh, radius_factor)
    return _ENCODERS[codec](joints, visible, input_wh, heatmap_wh, sigma)


class PoseCodec:
    """A codec (`'msra'`, `'dark'`, `'udp'` or `'udp_combined'`) at one input size: its warp and its targets.

    Training and evaluation share this object so that the crop warp, the heatmap targets and the
    decoding's inverse warp can never disagree.

    Args:
      name: codec name.
      input_size: `(H, W)` model input, e.g. `(256, 192)`.
      sigma: target Gaussian sigma in heatmap pixels (default `default_sigma(input_size)`; unused
        by 'udp_combined').
      stride: input / heatmap size (4 for HRNet).
      radius_factor: 'udp_combined' disk radius / `max(w, h)` (default 0.0546875).
    """

    def __init__(self, name: str, input_size: Sequence[int] = (256, 192), sigma: float | None = None,
                 stride: int = 4, radius_factor: float = UDP_RADIUS_FACTOR):
        self.name = _check_codec(name)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = heatmap_size(self.input_size, stride)
        self.sigma = float(default_sigma(self.input_size) if sigma is None else sigma)
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.radius_factor = float(radius_factor)
        if not self.radius_factor > 0:
            raise ValueError(f"radius_factor must be positive, got {radius_factor}")

    @property
    def warp_name(self) -> str:
        """The warp convention: 'udp' for both UDP codecs, else the codec's own name."""
        return "udp" if self.name in UDP_CODECS else self.name

    @property
    def channels_per_joint(self) -> int:
        """3 for 'udp_combined' (classification, x offset, y offset), else 1."""
        return channels_per_joint(self.name)

    def num_channels(self, num_keypoints: int) -> int:
        """Network output channels for K joints (`channels_per_joint * K`)."""
        return self.channels_per_joint * int(num_keypoints)

    @property
    def radius(self) -> float:
        """'udp_combined' disk radius in heatmap pixels."""
        return udp_combined_radius(self.heatmap_wh, self.radius_factor)

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
        return warp_matrix(self.warp_name, center, scale, rotation,
                           self.heatmap_wh if to_heatmap else self.input_wh)

    def encode(self, joints, visible) -> tuple[np.ndarray, np.ndarray]:
        """`(K, 2)` joints in input-crop pixels + `(K,)` visibility -> `(h, w, C)` maps, `(K,)` weights.

        C = K for the Gaussian codecs, 3K for 'udp_combined' (channel order in the module doc).
        """
        return encode_heatmaps(self.name, joints, visible, self.input_wh, self.heatmap_wh, self.sigma,
                               radius_factor=self.radius_factor)

    def _key(self) -> tuple:
        return (self.name, self.input_size, self.heatmap_size, self.sigma, self.radius_factor)

    def __repr__(self) -> str:
        extra = f", radius_factor={self.radius_factor}" if self.name == "udp_combined" else ""
        return f"PoseCodec({self.name!r}, input_size={self.input_size}, sigma={self.sigma}{extra})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PoseCodec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())
