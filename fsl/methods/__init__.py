"""Few-shot heads by name: `create_head("protonet", fusion)`; one file per head."""

from __future__ import annotations

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
from fsl.methods.utils import check_options
from fsl.methods.zero_shot import ZeroShot

HEADS: dict[str, type[FewShotHead]] = {
    head.name: head
    for head in (
        ZeroShot,
        LinearProbe,
        ProtoNet,
        MAML,
        SimpleShot,
        GDA,
        BDCSPN,
        PTMAP,
        CosinePrototypes,
        TipAdapter,
        TIM,
        LaplacianShot,
        LPPlusPlus,
    )
}

# A small working instance of every head: the options the tests and docs/methods.md build it with.
# Adding a head: its file (class with `name`, capabilities, documented options), one line in the tuple
# above, one line here, and its experiments/NAME.yaml.
EXAMPLE_OPTIONS: dict[str, dict] = {
    "zero_shot": {},
    "linear_probe": {"C": 1.0},
    "protonet": {},
    "maml": {"inner_steps": 5},
    "simpleshot": {"centering": "none"},
    "gda": {"shrinkage": 0.5},
    "bd_cspn": {"temperature": 10.0},
    "pt_map": {"normalize": True},
    "cosine_prototypes": {},
    "tip_adapter": {"finetune": True, "alpha": 10.0},
    "tim": {"steps": 20, "lr": 1e-3},
    "laplacian_shot": {"knn": 3},
    "lp_plus_plus": {"steps": 50},
}


def create_head(name: str, fusion: Fusion, shared_space: bool = False, **options) -> FewShotHead:
    """A head by its registry name: `create_head("protonet", fusion, projection="diagonal")`; `shared_space`
    reaches the heads that compare class names with features."""
    if name not in HEADS:
        raise FslError(f"unknown head {name!r} (the config's `method`); choose one of {sorted(HEADS)}")
    options = check_options(f"head {name}", HEADS[name].options, options)
    if HEADS[name].uses_class_names:
        options["shared_space"] = shared_space
    try:
        return HEADS[name](fusion, **options)
    except TypeError as error:
        raise FslError(f"head {name!r}: bad method_options {options} ({error})") from None
