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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from psa_jax.data.pose_transforms import COCO_FLIP_PAIRS, flip_permutation

__all__ = ["default_shift_heatmap", "flip_images", "flip_back", "average_with_flipped", "flip_test"]


def default_shift_heatmap(codec: str) -> bool:
    """True for msra/dark (HRNet `SHIFT_HEATMAP: true`), False for udp (UDP-Pose)."""
    if codec not in ("msra", "dark", "udp"):
        raise ValueError(f"unknown codec {codec!r}")
    return codec != "udp"


def flip_images(images: np.ndarray) -> np.ndarray:
    """`(B, H, W, C)` -> mirrored along W (contiguous copy)."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def flip_back(heatmaps_flipped: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """HRNet `flip_back` for NHWC: mirror along w, then swap left/right joint channels.

    Args:
      heatmaps_flipped: `(B, h, w, K)` heatmaps of flipped inputs.
    """
    hm = np.asarray(heatmaps_flipped)
    perm = flip_permutation(hm.shape[-1], flip_pairs)
    return np.ascontiguousarray(hm[:, :, ::-1, :][..., perm])


def average_with_flipped(heatmaps: np.ndarray, heatmaps_flipped: np.ndarray, *, shift_heatmap: bool,
                         flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """`(heatmaps + shift(flip_back(heatmaps_flipped))) / 2`, all `(B, h, w, K)`."""
    back = flip_back(heatmaps_flipped, flip_pairs)
    if shift_heatmap:
        back[:, :, 1:] = back[:, :, :-1].copy()
    return (np.asarray(heatmaps) + back) * 0.5


def flip_test(predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, shift_heatmap: bool,
              flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS) -> np.ndarray:
    """Runs `predict_fn` on `images` and on their mirror images and averages (see module doc).

    Args:
      predict_fn: `(B, H, W, 3)` float32 -> `(B, h, w, K)` heatmaps.
      images: `(B, H, W, 3)`.
    """
    heatmaps = np.asarray(predict_fn(images))
    flipped = np.asarray(predict_fn(flip_images(images)))
    return average_with_flipped(heatmaps, flipped, shift_heatmap=shift_heatmap, flip_pairs=flip_pairs)
