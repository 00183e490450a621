"""Where each device of a layer sits on its crossbar tiles, and in which order it is programmed.

Physical layout used by the ``physical`` mapping (documented in docs/training.md):

* A layer with weights W of shape (out, in) is a device matrix with one row per input (word
  line) and two columns per output: G+ of output ``o`` in column ``2o``, G- in column ``2o + 1``.
* The bias is one more input row (driven at a constant read voltage). With ``share_bias=True``
  it is the last row of the layer's matrix (it shares tiles with the weights); with
  ``share_bias=False`` it is a separate (1, 2*out) matrix on tiles of its own.
* The matrix is cut into tiles of ``tile_rows x tile_cols`` devices (default 8 x 8), tiles
  numbered row-major. Edge tiles may be partial; only used devices are programmed.
* Within a tile, devices are programmed top-to-bottom down a column, then the next column to the
  right (the order of the measured disturbance data: 8 rows per column).
* ``k`` = number of devices programmed after a device *in its own tile*: the key into the
  disturbance database. The last programmed device of each tile has ``k = 0``.

Pure numpy; no torch needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileLayout:
    """How a network sits on crossbar tiles: tile size in devices and where each bias goes.

    A model carries its layout (``HardwareAwareMLP.layout``), its checkpoint stores it, and the
    noise model, the evaluation and the conductance plan all read it from there.
    """

    rows: int = 8
    cols: int = 8
    share_bias: bool = True

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"tile size must be at least 1 x 1, got {self.rows} x {self.cols}")


DEFAULT_LAYOUT = TileLayout()


def tile_order(n_rows: int, n_cols: int, tile_rows: int = DEFAULT_LAYOUT.rows,
               tile_cols: int = DEFAULT_LAYOUT.cols) -> tuple[np.ndarray, np.ndarray]:
    """For an (n_rows, n_cols) device matrix: (tile index, k) per device, both int64 arrays.

    Tiles are numbered row-major over the tile grid; k counts the devices programmed after the
    device in the same tile (column by column, top to bottom).
    """
    if min(n_rows, n_cols, tile_rows, tile_cols) < 1:
        raise ValueError("matrix and tile sizes must be >= 1")
    r = np.arange(n_rows)[:, None].repeat(n_cols, 1)
    c = np.arange(n_cols)[None, :].repeat(n_rows, 0)
    tr, tc = r // tile_rows, c // tile_cols
    n_tile_cols = -(-n_cols // tile_cols)
    tile = tr * n_tile_cols + tc
    # used size of this device's tile (edge tiles are partial)
    h = np.minimum(tile_rows, n_rows - tr * tile_rows)
    w = np.minimum(tile_cols, n_cols - tc * tile_cols)
    order = (c - tc * tile_cols) * h + (r - tr * tile_rows)
    k = h * w - 1 - order
    return tile.astype(np.int64), k.astype(np.int64)


@dataclass
class LayerDevices:
    """Disturbance keys (k) and tile ids of one layer's devices; index 0 = G+, 1 = G-."""

    weight_k: np.ndarray  # (2, out, in)
    bias_k: np.ndarray  # (2, out)
    weight_tile: np.ndarray  # (2, out, in)
    bias_tile: np.ndarray  # (2, out)
    n_tiles: int


def layer_devices(out_features: int, in_features: int, *, tile_rows: int = DEFAULT_LAYOUT.rows,
                  tile_cols: int = DEFAULT_LAYOUT.cols,
                  share_bias: bool = DEFAULT_LAYOUT.share_bias) -> LayerDevices:
    """Tile and k for every device of a layer laid out as described in the module docstring."""
    rows = in_features + (1 if share_bias else 0)
    tile, k = tile_order(rows, 2 * out_features, tile_rows, tile_cols)
    # device matrix (row = input, col = 2*out + sign) -> (sign, out, in)
    wk = k[:in_features].reshape(in_features, out_features, 2).transpose(2, 1, 0)
    wt = tile[:in_features].reshape(in_features, out_features, 2).transpose(2, 1, 0)
    n_tiles = int(tile.max()) + 1
    if share_bias:
        bk = k[in_features].reshape(out_features, 2).T
        bt = tile[in_features].reshape(out_features, 2).T
    else:
        btile, bkk = tile_order(1, 2 * out_features, tile_rows, tile_cols)
        bk = bkk[0].reshape(out_features, 2).T
        bt = btile[0].reshape(out_features, 2).T + n_tiles
        n_tiles += int(btile.max()) + 1
    return LayerDevices(np.ascontiguousarray(wk), np.ascontiguousarray(bk),
                        np.ascontiguousarray(wt), np.ascontiguousarray(bt), n_tiles)


def reference_visit_keys(shape: tuple[int, ...]) -> np.ndarray:
    """Disturbance key the published code uses for each element of a tensor of `shape`.

    Each tensor is its own crossbar of N elements, visited column-major over (out, in) (down
    ``out`` first); the element at visit index v gets key N - v, i.e. (devices after) + 1, and
    the last visited element gets 0. The published code also wraps after a hard-coded 8 rows;
    for out <= 8 (every layer of the 2-8-1 network) that is the plain column-major order used
    here, and larger tensors are not defined by the reference.
    """
    n = int(np.prod(shape))
    if len(shape) == 1:
        v = np.arange(n)
    elif len(shape) == 2:
        out, inn = shape
        v = (np.arange(inn)[None, :] * out + np.arange(out)[:, None]).reshape(-1)
    else:
        raise ValueError(f"reference keys defined for 1-D and 2-D tensors, got shape {shape}")
    key = n - v
    key[v == n - 1] = 0
    return key.reshape(shape).astype(np.int64)
