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
