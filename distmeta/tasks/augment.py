"""Affine jitter of training images (Koch et al. 2015, section 3.3; Lake et al. 2019).

Each image gets its own random affine map ``A = R(theta) Sh(s_x, s_y) S(c_x, c_y)`` plus a
shift (t_x, t_y) in pixels, with theta ~ U(-rotate, rotate) degrees,
s ~ U(-shear, shear), c ~ U(scale) and t ~ U(-translate, translate). The parameters come
from the episode's own generator, after every draw that picks the episode's classes and
images, so a task is still a function of its seed alone (and switching augmentation on
or off leaves the episode's classes and images unchanged). Pixels sampled from outside
the image read as background (0 = no ink).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def affine_matrices(n: int, rng: np.random.Generator, rotate: float, shear: float,
                    scale, translate: float, size: int) -> np.ndarray:
    """``n`` matrices [n, 2, 3] in ``affine_grid``'s normalised coordinates (output -> input)."""
    theta = np.deg2rad(rng.uniform(-rotate, rotate, n))
    sh = rng.uniform(-shear, shear, (n, 2))
    sc = rng.uniform(scale[0], scale[1], (n, 2))
    shift = rng.uniform(-translate, translate, (n, 2)) * 2.0 / size  # pixels -> [-1, 1] units
    cos, sin = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)          # [n, 2, 2]
    shr = np.stack([np.stack([np.ones(n), sh[:, 0]], -1), np.stack([sh[:, 1], np.ones(n)], -1)], -2)
    scl = np.zeros((n, 2, 2))
    scl[:, 0, 0], scl[:, 1, 1] = sc[:, 0], sc[:, 1]
    forward = rot @ shr @ scl
    inverse = np.linalg.inv(forward)  # affine_grid maps output pixels to where they are read from
    return np.concatenate([inverse, (-inverse @ shift[:, :, None])], -1).astype(np.float32)


def affine_jitter(images: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Jitter float images [N, C, H, W] (values in [0, 1], 0 = background) with ``cfg``'s ranges."""
    n, _, h, w = images.shape
    mats = affine_matrices(n, rng, cfg.rotate, cfg.shear, cfg.scale, cfg.translate, max(h, w))
    x = torch.from_numpy(np.ascontiguousarray(images))
    grid = F.affine_grid(torch.from_numpy(mats), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).numpy()
