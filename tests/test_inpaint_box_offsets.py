"""`inpaint_box` with an explicit offset (issue 13, item 5): DCDP's hard-coded 100x100 box at rows/cols 100-199."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import operators
from operators.base import OperatorError


def test_dcdp_box_is_rows_and_columns_100_to_199():
    A = operators.get("inpaint_box", image_shape=(3, 256, 256), seeds=[0, 7], hole_size=100, offset=(100, 100))
    expected = torch.ones(256, 256, dtype=torch.float64)
    expected[100:200, 100:200] = 0  # spec seed §5.2: fixed 100x100 box, rows/cols 100-199
    for mask in A.mask:  # the same fixed hole for every image (no position draw)
        assert torch.equal(mask[0], expected)
    assert A.missing_pixels.tolist() == [10000, 10000]
    assert A.describe()["offset"] == [100, 100] and A.describe()["position"] == "offset"
    x = torch.randn(2, 3, 256, 256, dtype=torch.float64)
    assert torch.equal(A(x)[:, :, 100:200, 100:200], torch.zeros(2, 3, 100, 100, dtype=torch.float64))
    assert torch.equal(A(x)[:, :, :100], x[:, :, :100])


def test_offset_with_drawn_sizes_keeps_the_top_left_corner():
    A = operators.get("inpaint_box", image_shape=(3, 32, 32), seeds=[0, 1, 2], mask_len_range=(4, 9), offset=(3, 5))
    for seed, mask in zip((0, 1, 2), A.mask):
        rs = np.random.RandomState(seed)  # the sizes are drawn as before (DPS order: height, then width)
        h, w = int(rs.randint(4, 9)), int(rs.randint(4, 9))
        rows, cols = torch.nonzero(mask[0] == 0, as_tuple=True)
        assert (rows.min().item(), cols.min().item()) == (3, 5)
        assert (rows.max().item() - 2, cols.max().item() - 4) == (h, w)


def test_drawn_boxes_are_described_as_before():
    """No offset: the description (which enters config hashes) has no `offset` key, position 'dps' by default."""
    d = operators.get("inpaint_box", image_shape=(3, 64, 64), seeds=[0], hole_size=8).describe()
    assert "offset" not in d and (d["position"], d["margin"]) == ("dps", 16)


@pytest.mark.parametrize("kwargs,message", [
    ({"offset": (200, 0), "hole_size": 100}, "does not fit a 256x256 image; use offsets in"),
    ({"offset": (1,), "hole_size": 10}, "offset must be two integers"),
    ({"offset": (1.5, 2), "hole_size": 10}, "offset must be two integers"),
    ({"offset": (1, 2), "hole_size": 10, "position": "dps"}, "give either offset"),
    ({"offset": (1, 2), "hole_size": 10, "margin": 4}, "give either offset"),
])
def test_bad_offsets_are_one_line_errors(kwargs, message):
    with pytest.raises(OperatorError, match=message):
        operators.get("inpaint_box", image_shape=(3, 256, 256), seeds=[0], **kwargs)
