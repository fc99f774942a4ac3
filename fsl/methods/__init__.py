"""Few-shot heads by name: `create_head("protonet", fusion)`; one file per head."""


from __future__ import annotations

from collections.abc import Callable

from fsl.errors import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.bd_cspn import BDCSPN
from fsl.methods.cosine_prototypes import CosinePrototypes
from fsl.methods.fusion import Fusion
from fsl.methods.gda import GDA
from fsl.methods.laplacian_shot import LaplacianShot
from fsl.methods.linear_probe import LinearProbe
from fsl.methods.lp_plus_plus import LPPlusPlus
from fsl.methods.maml import MAML
from fsl.methods.protonet import ProtoNet
from fsl.methods.pt_map import PTMAP
from fsl.methods.simpleshot import SimpleShot
from fsl.methods.tim import TIM
from fsl.methods.tip_adapter import TipAdapter
from fsl.methods.zero_shot import ZeroShot

HEADS: dict[str, Callable[..., FewShotHead]] = {
    "zero_shot": ZeroShot, "linear_probe": LinearProbe, "protonet": ProtoNet, "maml": MAML, "simpleshot": SimpleShot,
    "gda": GDA, "bd_cspn": BDCSPN, "pt_map": PTMAP, "cosine_prototypes": CosinePrototypes,
    "tip_adapter": TipAdapter, "tim": TIM, "laplacian_shot": LaplacianShot, "lp_plus_plus": LPPlusPlus,
}
SHARED_SPACE_OPTION = {"zero_shot", "linear_probe", "tip_adapter", "lp_plus_plus", "gda"}  # heads that compare class-name text to features


def create_head(name: str, fusion: Fusion, shared_space: bool = False, **options) -> FewShotHead:
    if name not in HEADS:
        raise FslError(f"unknown method {name!r}; choose one of {sorted(HEADS)}")
    if name in SHARED_SPACE_OPTION:
        options["shared_space"] = shared_space
    try:
        return HEADS[name](fusion, **options)
    except TypeError as error:
        raise FslError(f"method {name!r}: bad method_options {options} ({error})") from None
