from __future__ import annotations

import pytest
import torch

from fsl.errors import FslError
from fsl.methods.fusion import FUSIONS, create_fusion


@pytest.mark.parametrize("name,out_dim", [("image", 6), ("text", 4), ("concat", 10), ("weighted", 6), ("gate", 10)])
def test_fusion_shapes(name, out_dim):
    fusion = create_fusion(name, 6, 4)
    features = torch.randn(3, 7, 10)
    assert fusion(features).shape == (3, 7, out_dim) and fusion.out_dim == out_dim


def test_fusions_pick_and_weigh_the_right_columns():
    image, text = torch.randn(5, 6), torch.randn(5, 4)
    features = torch.cat([image, text], -1)
    torch.testing.assert_close(create_fusion("image", 6, 4)(features), image)
    torch.testing.assert_close(create_fusion("text", 6, 4)(features), text)
    weighted = create_fusion("concat", 6, 4, image_weight=0.64)(features)
    torch.testing.assert_close(weighted, torch.cat([0.8 * image, 0.6 * text], -1))
    # the gate starts as plain concatenation, and learns (it has parameters)
    torch.testing.assert_close(
        create_fusion("gate", 6, 4, image_weight=0.7)(features),
        create_fusion("concat", 6, 4, image_weight=0.7)(features),
    )
    assert sum(p.numel() for p in create_fusion("gate", 6, 4).parameters()) > 0
    same_dims = create_fusion("weighted", 4, 4)
    torch.testing.assert_close(same_dims(torch.cat([text, 3 * text], -1)), 2 * text)


def test_wrong_width_or_name_is_a_clear_error():
    with pytest.raises(FslError, match="expects 6 \\+ 4 feature columns, got 9"):
        create_fusion("concat", 6, 4)(torch.randn(2, 9))
    with pytest.raises(FslError, match="unknown fusion 'sum'"):
        create_fusion("sum", 6, 4)
    assert set(FUSIONS) == {"image", "text", "concat", "weighted", "gate"}
