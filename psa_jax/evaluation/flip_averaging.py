"""Flip test: average the heatmaps of a crop and of its mirror image (NumPy).

HRNet `lib/core/function.py::validate` (`TEST.FLIP_TEST: true`) and `lib/utils/transforms.py::flip_back`:
the input is flipped along its width, the model's heatmaps for it are flipped back and their
left/right channels swapped, then (HRNet `TEST.SHIFT_HEATMAP: true`) shifted right by one heatmap
pixel (`out[..., 1:] = out[..., :-1]`, column 0 kept) and averaged with the unflipped heatmaps.

Why the shift: with the standard warp a heatmap pixel j sits at input pixel 4j, so the flipped
crop's peak lands 0.75 heatmap px left of the unflipped one after flipping back (a `W`-wide input
flips as `x -> W - 1 - x`, a `w`-wide heatmap as `x -> w - 1 - x`, and `(W - 1) / 4 = w - 0.75`);
the 1 px shift leaves +0.25 px. UDP aligns the first and last pixel centres of input and heatmap,
so the flip is exact and UDP-Pose does not shift. Defaults, by codec: msra and dark shift (HRNet's
`SHIFT_HEATMAP: true`, also mmpose's DARK configs), udp does not (UDP-Pose `master` `validate`).
DarkPose's own `validate` omits the shift; pass `shift_heatmap=False` to reproduce it.

Combined maps (codec ``udp_combined``, `(B, h, w, 3K)`: classification, x offset, y offset per
joint): mmpose `core/post_processing/post_transforms.py::flip_back(..., target_type='CombinedTarget')`
also negates every x-offset channel (a mirror maps `mu_x - p_x` to `-(mu_x - p_x)`) and swaps the
left/right joints as groups of 3 channels; the two outputs are then averaged channel by channel,
offsets included, without a shift (mmpose's UDP combined configs: `shift_heatmap=False`).
Pass `codec='udp_combined'` to `flip_back`, `average_with_flipped` and `flip_test` for this layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from psa_jax.data.pose_targets import CODECS, channels_per_joint
from psa_jax.data.pose_transforms import COCO_FLIP_PAIRS, flip_permutation

__all__ = ["default_shift_heatmap", "flip_images", "flip_back", "average_with_flipped", "flip_test"]


def default_shift_heatmap(codec: str) -> bool:
    """True for msra/dark (HRNet `SHIFT_HEATMAP: true`), False for udp and udp_combined (UDP-Pose)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    return codec in ("msra", "dark")


def flip_images(images: np.ndarray) -> np.ndarray:
    """`(B, H, W, C)` -> mirrored along W (contiguous copy)."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def flip_back(heatmaps_flipped: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS, *,
              codec: str | None = None) -> np.ndarray:
    """HRNet `flip_back` for NHWC: mirror along w, then swap left/right joint channels.

    Args:
      heatmaps_flipped: `(B, h, w, K)` heatmaps of flipped inputs (`(B, h, w, 3K)` combined maps
        for `codec='udp_combined'`: x offsets negated, joints swapped as 3-channel groups).
      codec: the codec whose outputs these are (None: K heatmaps).
    """
    hm = np.asarray(heatmaps_flipped)
    per_joint = 1 if codec is None else channels_per_joint(codec)
    if hm.ndim != 4 or hm.shape[-1] % per_joint:
        raise ValueError(f"outputs of codec {codec!r} must be NHWC with {per_joint} channels per joint, "
                         f"got shape {hm.shape}")
    if per_joint == 1:
        perm = flip_permutation(hm.shape[-1], flip_pairs)
        return np.ascontiguousarray(hm[:, :, ::-1, :][..., perm])
    b, h, w, c = hm.shape
    groups = hm[:, :, ::-1, :].reshape(b, h, w, c // 3, 3)
    groups = groups[:, :, :, flip_permutation(c // 3, flip_pairs), :] * np.asarray([1, -1, 1], hm.dtype)
    return np.ascontiguousarray(groups.reshape(b, h, w, c))


def average_with_flipped(heatmaps: np.ndarray, heatmaps_flipped: np.ndarray, *, shift_heatmap: bool,
                         flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS,
                         codec: str | None = None) -> np.ndarray:
    """`(heatmaps + shift(flip_back(heatmaps_flipped))) / 2`, all `(B, h, w, K)` (`3K` for
    `codec='udp_combined'`; see `flip_back`)."""
    back = flip_back(heatmaps_flipped, flip_pairs, codec=codec)
    if shift_heatmap:
        back[:, :, 1:] = back[:, :, :-1].copy()
    return (np.asarray(heatmaps) + back) * 0.5


def flip_test(predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, shift_heatmap: bool,
              flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS, codec: str | None = None) -> np.ndarray:
    """Runs `predict_fn` on `images` and on their mirror images and averages (see module doc).

    Args:
      predict_fn: `(B, H, W, 3)` float32 -> `(B, h, w, K)` heatmaps (`3K` maps for 'udp_combined').
      images: `(B, H, W, 3)`.
      codec: the codec of the outputs (None: K heatmaps).
    """
    heatmaps = np.asarray(predict_fn(images))
    flipped = np.asarray(predict_fn(flip_images(images)))
    return average_with_flipped(heatmaps, flipped, shift_heatmap=shift_heatmap, flip_pairs=flip_pairs,
                                codec=codec)
