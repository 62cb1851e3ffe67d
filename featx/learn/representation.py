"""What a shallow model reads from a store: one stored layer, the raw pixels, or several layers
concatenated ("all layers, one linear head", as Head2Toe): each block L2-normalised so that no
layer outweighs the others by its scale alone; the pipeline's z-score then standardises them.

A model's input is the stored vectors of its `layers`, side by side in that order
(`model_input`); `Representation`, the pipeline's first step, turns them into what the classifier
reads. Training, `featx predict` and `featx serve` all build the input with `model_input`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from featx.errors import InputError
from featx.preprocess.views import PIXEL_SIDE, PIXELS

CONCAT = "concat"  # the name of the concatenation of every stored network layer
GREY_TOLERANCE = 1e-3  # pixels whose three channels agree within this are grey: one channel is kept


def model_input(features: Mapping[str, np.ndarray], layers: Sequence[str]) -> np.ndarray:
    """The stored vectors of `layers`, side by side (float32), from {layer: (N, D)} arrays."""
    missing = [layer for layer in layers if layer not in features]
    if missing:
        raise InputError(f"the features lack layer(s) {missing} that the model reads; extract them with "
                         + " ".join(f"--layer {layer}" for layer in layers))
    return np.hstack([np.asarray(features[layer], dtype=np.float32) for layer in layers])


def representation_layers(name: str, stored: Sequence[str]) -> list[str]:
    """The stored layers a representation reads: `concat` = every network layer, else the layer itself."""
    if name == CONCAT:
        return [layer for layer in stored if layer != PIXELS]
    return [name]


def columns_of(layers: Sequence[str], dims: Sequence[int], wanted: Sequence[str]) -> np.ndarray:
    """The columns of the `wanted` layers in rows holding `layers` (widths `dims`) side by side."""
    starts = dict(zip(layers, np.cumsum((0, *dims))[:-1]))
    widths = dict(zip(layers, dims))
    return np.concatenate([np.arange(starts[layer], starts[layer] + widths[layer]) for layer in wanted])


def is_grey(pixels: np.ndarray) -> bool:
    """True when every row's three colour channels agree (a grey image stored as RGB)."""
    if pixels.size == 0:
        return False
    channels = pixels.reshape(len(pixels), 3, -1)
    return bool(np.abs(channels[:, 1:] - channels[:, :1]).max() <= GREY_TOLERANCE)


class Representation(TransformerMixin, BaseEstimator):
    """The side-by-side vectors of `layers` (widths `dims`) → the classifier's input: the one
    block, or each block L2-normalised and concatenated. `grey`: keep one channel of the pixels."""

    def __init__(self, layers: tuple = (), dims: tuple = (), grey: bool = False):
        self.layers = layers
        self.dims = dims
        self.grey = grey

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1] != sum(self.dims):
            raise InputError(f"the model reads {sum(self.dims)} values per image (layers {list(self.layers)}), "
                             f"these features have {X.shape[1]}")
        blocks = np.split(X, np.cumsum(self.dims)[:-1], axis=1)
        blocks = [self._grey(b) if layer == PIXELS and self.grey else b for layer, b in zip(self.layers, blocks)]
        if len(blocks) == 1:
            return blocks[0]
        norms = [np.linalg.norm(b, axis=1, keepdims=True) for b in blocks]
        return np.hstack([b / np.maximum(n, 1e-12) for b, n in zip(blocks, norms)])

    @staticmethod
    def _grey(block: np.ndarray) -> np.ndarray:
        return block[:, :PIXEL_SIDE * PIXEL_SIDE]
