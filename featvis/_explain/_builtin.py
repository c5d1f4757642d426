"""featvis's own explanation methods, registered through the same hook a plugin uses."""

from __future__ import annotations

from collections.abc import Callable

from featvis._capabilities import Differentiable, LinearHead, Patchable, Scorer
from featvis._explain import _activation, _channels, _gradient, _occlusion
from featvis._explain._registry import Method
from featvis.hookspecs import hookimpl

__all__ = ["register_methods"]

_GRADIENT = (Differentiable,)


@hookimpl
def register_methods(register: Callable[[Method], None]) -> None:
    """Register the built-in methods (see :func:`featvis.hookspecs.register_methods`)."""
    for name, run, description, aliases in (
        ("gradcam", _gradient.gradcam, "Grad-CAM (Selvaraju et al., 2017)", ("grad-cam",)),
        (
            "gradcampp",
            _gradient.gradcampp,
            "Grad-CAM++ (Chattopadhyay et al., 2018)",
            ("gradcam++", "grad-cam++"),
        ),
        ("xgradcam", _gradient.xgradcam, "XGrad-CAM (Fu et al., 2020)", ("xgrad-cam",)),
        ("layercam", _gradient.layercam, "LayerCAM (Jiang et al., 2021)", ("layer-cam",)),
        ("hirescam", _gradient.hirescam, "HiResCAM (Draelos & Carin, 2020)", ("hires-cam",)),
    ):
        register(
            Method(
                name,
                run,
                _GRADIENT,
                description,
                aliases=aliases,
                run_layers=_gradient.at_layers(_gradient.FORMULAS[name]),
            )
        )
    register(
        Method(
            "cam",
            _activation.cam,
            (Scorer, LinearHead),
            "CAM: a linear head's weights on the last spatial layer (Zhou et al., 2016)",
        )
    )
    register(
        Method(
            "eigencam",
            _activation.eigencam,
            (),
            "EigenCAM: the first principal component of the layer (Muhammad & Yeasin, 2020); "
            "not class-discriminative",
            class_discriminative=False,
            aliases=("eigen-cam",),
        )
    )
    register(
        Method(
            "scorecam",
            _channels.scorecam,
            (Scorer,),
            "Score-CAM (Wang et al., 2020)",
            options=("channels",),
            aliases=("score-cam",),
        )
    )
    register(
        Method(
            "ablationcam",
            _channels.ablationcam,
            (Scorer, Patchable),
            "Ablation-CAM (Desai & Ramaswamy, 2020)",
            aliases=("ablation-cam",),
        )
    )
    register(
        Method(
            "occlusion",
            _occlusion.occlusion,
            (Scorer,),
            "Occlusion (Zeiler & Fergus, 2014), as captum's Occlusion",
            uses_layer=False,
            options=("window", "stride", "baseline", "refine"),
        )
    )
    register(
        Method(
            "rise",
            _occlusion.rise,
            (Scorer,),
            "RISE: randomized input sampling (Petsiuk et al., 2018)",
            uses_layer=False,
            options=("masks", "cells", "p"),
        )
    )
