import numpy as np

from training.tiles import layer_devices, reference_visit_keys, tile_order


def test_single_tile_programmed_down_columns():
    tile, k = tile_order(3, 4, 8, 8)
    assert (tile == 0).all()
    # column-major order: (0,0) first -> k = 11, (2,3) last -> k = 0, (1,0) second -> k = 10
    assert k[0, 0] == 11 and k[1, 0] == 10 and k[0, 1] == 8 and k[2, 3] == 0
    assert sorted(k.ravel().tolist()) == list(range(12))


def test_layer_spanning_several_tiles():
    tile, k = tile_order(10, 12, 4, 8)
    assert tile.max() + 1 == 3 * 2  # 3 tile rows (4, 4, 2) x 2 tile columns (8, 4)
    for t in range(6):
        kk = np.sort(k[tile == t])
        assert kk.tolist() == list(range(kk.size))  # each tile its own programming order
    # edge tile rows 8-9, cols 8-11 has 8 devices; its first device has k = 7
    assert tile[8, 8] == 5 and k[8, 8] == 7 and k[9, 11] == 0


def test_layer_devices_bias_shared_or_not():
    shared = layer_devices(8, 2, share_bias=True)
    assert shared.weight_k.shape == (2, 8, 2) and shared.bias_k.shape == (2, 8)
    # 3 rows (2 inputs + bias) x 16 columns -> two 3x8 tiles of 24 devices
    assert shared.n_tiles == 2
    assert shared.weight_k[0, 0, 0] == 23 and shared.weight_k[1, 0, 0] == 20
    assert shared.bias_k[1, 3] == 0  # G- of output 3 is the last device of tile 0
    sep = layer_devices(8, 2, share_bias=False)
    assert sep.n_tiles == 4
    assert set(np.unique(sep.bias_tile).tolist()) == {2, 3}
    assert sep.weight_k.max() == 15 and sep.bias_k.max() == 7


def test_reference_keys_match_published_map():
    k = reference_visit_keys((8, 2))
    expected = np.array([[16, 8], [15, 7], [14, 6], [13, 5], [12, 4], [11, 3], [10, 2], [9, 0]])
    np.testing.assert_array_equal(k, expected)
    np.testing.assert_array_equal(reference_visit_keys((8,)), [8, 7, 6, 5, 4, 3, 2, 0])
    np.testing.assert_array_equal(reference_visit_keys((1, 8)), [[8, 7, 6, 5, 4, 3, 2, 0]])


def test_64_32_layer_on_8x8_tiles_separate_bias():
    """A 64-32 layer: 64 input rows x 64 device columns (G+, G- per output) = 8 x 8 full tiles."""
    lay = layer_devices(32, 64, tile_rows=8, tile_cols=8, share_bias=False)
    # 64 weight tiles + the bias row (1 x 64 devices) on 8 tiles of its own
    assert lay.n_tiles == 64 + 8
    wt, wk = lay.weight_tile, lay.weight_k  # (2, out, in)
    assert sorted(np.unique(wt).tolist()) == list(range(64))
    for t in range(64):
        assert sorted(wk[wt == t].tolist()) == list(range(64))  # k = 0..63 in every tile
    # tiles in raster order: tile of input row r, device column c is (r // 8) * 8 + c // 8;
    # G+ of output o sits in column 2o, G- in column 2o + 1
    r = np.arange(64)[None, :]
    for sign in (0, 1):
        c = 2 * np.arange(32)[:, None] + sign
        np.testing.assert_array_equal(wt[sign], (r // 8) * 8 + c // 8)
        # within a tile: down a column (top to bottom), then the next column to the right
        order = (c % 8) * 8 + (r % 8)
        np.testing.assert_array_equal(wk[sign], 63 - order)
    # first programmed device of tile 0 is input 0 / G+ of output 0; last is input 7 / G- of 3
    assert wk[0, 0, 0] == 63 and wk[1, 3, 7] == 0 and wk[0, 0, 1] == 62 and wk[1, 0, 0] == 55
    # bias tiles: 8 tiles of 1 x 8, each programmed left to right, numbered after the weights
    assert sorted(np.unique(lay.bias_tile).tolist()) == list(range(64, 72))
    np.testing.assert_array_equal(lay.bias_k[0], 7 - (2 * np.arange(32)) % 8)
    np.testing.assert_array_equal(lay.bias_k[1], 6 - (2 * np.arange(32)) % 8)


def test_64_32_layer_on_8x8_tiles_shared_bias():
    """With the bias as the 65th row, a ninth row of partial (1 x 8) tiles holds it."""
    lay = layer_devices(32, 64, share_bias=True)
    assert lay.n_tiles == 9 * 8
    assert sorted(np.unique(lay.bias_tile).tolist()) == list(range(64, 72))
    for t in range(64):  # the weight tiles are unchanged: full 8 x 8, k = 0..63
        assert sorted(lay.weight_k[lay.weight_tile == t].tolist()) == list(range(64))
    assert lay.bias_k.max() == 7


def test_tile_size_is_configurable():
    lay = layer_devices(32, 64, tile_rows=16, tile_cols=16, share_bias=False)
    assert lay.n_tiles == 16 + 4  # 4 x 4 weight tiles of 256 devices; bias 1 x 64 -> 4 tiles
    for t in range(16):
        assert sorted(lay.weight_k[lay.weight_tile == t].tolist()) == list(range(256))
    tile, k = tile_order(5, 7, 5, 7)  # one tile exactly
    assert (tile == 0).all() and k[0, 0] == 34 and k[4, 6] == 0
