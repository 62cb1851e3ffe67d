"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) on
featx's stored maps: a store extracted with `--pool flatten` on one or two mid-depth layers holds
every image's maps, so the patch features come from featx's own extractor in one resumable pass.

- locally aware patch features: each layer's map is averaged over its 3 × 3 neighbourhood, the
  coarser map is upsampled to the finest grid, and the layers are concatenated per position;
- a greedy k-center coreset of the normal patches, selected on a random projection;
- a patch's score is the distance to its nearest coreset patch; the image's score is the largest
  one re-weighted by how isolated its nearest memory patch is (the paper's eq. 7);
- the heatmap is the patch-score grid upsampled to the network's view and smoothed."""

from __future__ import annotations

import logging

import numpy as np

from featx.errors import InputError

log = logging.getLogger(__name__)

NEIGHBOURHOOD = 3  # the paper's patch size p: 3 × 3 local averaging
PROJECTION_DIM = 128  # Johnson-Lindenstrauss projection used only to select the coreset
SUPPORT = 9  # b in the paper: neighbours of the nearest memory patch in the re-weighting
HEATMAP_SIGMA = 4.0  # the paper's Gaussian smoothing of the upsampled heatmap, in pixels
MAX_PATCH_LAYERS = 2


def check_patch_store(config: dict, layers: list[str], store_path) -> None:
    """Patch mode needs un-pooled maps: a store extracted with --pool flatten on one or two layers."""
    fix = (f"extract the maps of one or two mid-depth layers with `featx extract IMAGES -o STORE --pool flatten "
           f"--layer L1 --layer L2` (for {config.get('backbone')}: see `featx layers {config.get('backbone')}`, "
           "e.g. blocks.2.1.add and blocks.4.2.add of efficientnet_lite0)")
    if config.get("pool") != "flatten":
        raise InputError(f"--patch needs the stored maps, but store '{store_path}' holds pooled vectors "
                         f"(--pool {config.get('pool')}); {fix}")
    if not 1 <= len(layers) <= MAX_PATCH_LAYERS:
        raise InputError(f"--patch takes one or two layers; store '{store_path}' holds {len(layers)} "
                         f"({', '.join(layers)}); {fix}")
    if int(config.get("tta", 1)) != 1:
        raise InputError(f"--patch needs maps of one view; store '{store_path}' averaged --tta {config.get('tta')}")


def map_shapes(extractor, layers: list[str]) -> dict[str, list[int]]:
    """(C, H, W) of each layer's map at the extractor's input size (one dummy forward pass)."""
    import torch

    size = extractor.backbone.preprocess.crop_size
    with torch.inference_mode():
        outputs = extractor.tap(torch.zeros(1, 3, size, size, device=extractor.device))
    shapes = {}
    for layer in layers:
        shape = tuple(outputs[layer].shape[1:])
        if len(shape) != 3:
            raise InputError(f"layer '{layer}' gives {shape}, not a spatial map; --patch needs convolutional maps")
        if extractor.layer_formats.get(layer) == "NHWC":
            shape = (shape[2], shape[0], shape[1])
        shapes[layer] = [int(s) for s in shape]
    return shapes


def patch_features(flat: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> np.ndarray:
    """Flattened maps per layer, (N, C*H*W) each -> locally aware patch features (N, H, W, D) on
    the finest grid of the layers."""
    import torch
    import torch.nn.functional as F

    grid = max((shape[1], shape[2]) for shape in shapes.values())
    parts = []
    for layer, (c, h, w) in shapes.items():
        maps = torch.from_numpy(np.ascontiguousarray(flat[layer], dtype=np.float32)).view(-1, c, h, w)
        maps = F.avg_pool2d(maps, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2, count_include_pad=False)
        if (h, w) != grid:
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        parts.append(maps)
    return torch.cat(parts, 1).permute(0, 2, 3, 1).contiguous().numpy()


def greedy_coreset(patches: np.ndarray, fraction: float, seed: int, progress: bool = False) -> np.ndarray:
    """Indices of a greedy k-center coreset (the paper's Algorithm 1): each step adds the patch
    farthest from those chosen, distances measured on a random projection to PROJECTION_DIM.
    Each step is one matrix-vector product over all patches, done in place in float32 (NumPy: on a
    small shared CPU its single-threaded BLAS call beats torch's threaded one by 2-3x)."""
    n = len(patches)
    keep = max(1, min(n, int(round(fraction * n))))
    if keep >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    X = np.ascontiguousarray(patches, dtype=np.float32)
    if X.shape[1] > PROJECTION_DIM:
        projection = rng.standard_normal((X.shape[1], PROJECTION_DIM), dtype=np.float32) / np.sqrt(PROJECTION_DIM)
        X = X @ projection
    squared = np.einsum("ij,ij->i", X, X)
    chosen = np.empty(keep, dtype=np.int64)
    chosen[0] = int(rng.integers(n))
    nearest = np.full(n, np.inf, dtype=np.float32)
    distance = np.empty(n, dtype=np.float32)
    from tqdm.auto import tqdm

    for step in tqdm(range(1, keep), desc="coreset", unit="patch", disable=not progress, dynamic_ncols=True):
        last = chosen[step - 1]
        np.matmul(X, X[last], out=distance)
        distance *= -2
        distance += squared
        distance += squared[last]
        np.minimum(nearest, distance, out=nearest)
        chosen[step] = int(np.argmax(nearest))
    return chosen


class PatchMemory:
    """The coreset of normal patches with exact nearest-patch search (FAISS, L2)."""

    def __init__(self, bank: np.ndarray):
        from featx.retrieval.plan import load_faiss

        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.index = load_faiss().IndexFlatL2(self.bank.shape[1])
        self.index.add(self.bank)

    def score(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image scores (N,), patch-score grids (N, H, W)) of patch features (N, H, W, D)."""
        n, h, w, d = patches.shape
        flat = np.ascontiguousarray(patches.reshape(-1, d), dtype=np.float32)
        squared, nearest = self.index.search(flat, 1)
        distance = np.sqrt(np.maximum(squared[:, 0], 0)).reshape(n, h * w)
        nearest = nearest[:, 0].reshape(n, h * w)
        worst = distance.argmax(1)
        scores = distance[np.arange(n), worst]
        # eq. 7: a test patch whose nearest memory patch sits among close neighbours is less anomalous
        support_count = min(SUPPORT, len(self.bank))
        _, support = self.index.search(self.bank[nearest[np.arange(n), worst]], support_count)
        test = flat.reshape(n, h * w, d)[np.arange(n), worst]
        gaps = np.linalg.norm(self.bank[support] - test[:, None, :], axis=2)  # support[:, 0] is m* itself
        gaps -= gaps.max(1, keepdims=True)  # softmax over +distances, as in the paper and anomalib
        weights = 1.0 - np.exp(gaps[:, 0]) / np.exp(gaps).sum(1)
        return (weights * scores).astype(np.float64), distance.reshape(n, h, w).astype(np.float32)


def heatmap(grid: np.ndarray, size: int) -> np.ndarray:
    """A patch-score grid (H, W) upsampled to the network's view (size × size) and smoothed."""
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    up = F.interpolate(torch.from_numpy(np.asarray(grid, np.float32))[None, None], size=(size, size),
                       mode="bilinear", align_corners=False)[0, 0].numpy()
    return gaussian_filter(up, sigma=HEATMAP_SIGMA).astype(np.float32)
