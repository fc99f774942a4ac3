"""Few-shot heads by name: `create_head("protonet")`."""

from __future__ import annotations

from typing import Callable

from fsl import FslError
from fsl.methods.base import FewShotHead
from fsl.methods.protonet import ProtoNet

HEADS: dict[str, Callable[..., FewShotHead]] = {"protonet": ProtoNet}


def create_head(name: str, **options) -> FewShotHead:
    if name not in HEADS:
        raise FslError(f"unknown method {name!r}; choose one of {sorted(HEADS)}")
    return HEADS[name](**options)
