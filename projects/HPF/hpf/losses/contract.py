"""
What a detector calls: the base class of pyramid-level classification losses and the base class
of box-regression losses. Every pluggable loss of this package subclasses one of them, so a
detector swaps its loss in one config line and knows no loss by name. (GFL's Distribution Focal
Loss is part of GFL's box parametrisation, not pluggable: only GFL calls it.)
"""

from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

__all__ = ["BoxRegressionLoss", "ClassificationLoss", "check_loss_type"]


class ClassificationLoss(nn.Module):
    """
    A classification loss over the levels of a feature pyramid: a dense detector's ``cls_loss``.

    The levels stay separate so that a loss that needs them (HPF's statistics per level) gets
    them. Subclasses implement :meth:`forward`, set :attr:`uses_quality_targets` when their
    targets are IoU-quality scores, and override :meth:`metrics` to have values logged.

    Attributes:
        uses_quality_targets (bool): False: the row of a positive is one-hot in its class.
            True (QFL, VFL and their progressive forms): it holds the IoU of the positive's
            predicted box with its ground truth instead, which the detector then computes.
    """

    uses_quality_targets: bool = False

    def forward(
        self,
        logits_per_level: List[torch.Tensor],
        targets_per_level: List[torch.Tensor],
        normalizer: Union[float, torch.Tensor],
        valid_per_level: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """
        Args:
            logits_per_level: one ``[B, A_l, C]`` tensor per level (images first), or
                ``[N_l, C]`` with the images pooled.
            targets_per_level: tensors of the same shapes: one-hot rows, background rows all
                zero; quality scores in [0, 1] when :attr:`uses_quality_targets`.
            normalizer: the detector's count of positives (> 0) the summed loss is divided
                by. A loss with a normalisation of its own says so in its docstring.
            valid_per_level: None, or one bool mask per level, ``[B, A_l]`` per anchor or the
                logits' shape per entry; False entries (ignored anchors) add no loss.

        Returns:
            Tensor: the scalar loss.
        """
        raise NotImplementedError

    def metrics(self) -> Dict[str, float]:
        """Values of the last :meth:`forward` to log, by name; the detector logs them as they
        are. Default: none."""
        return {}


class BoxRegressionLoss(nn.Module):
    """
    A box-regression loss on the box deltas of the positives: a detector's ``box_loss``
    (RetinaNet's in place of detectron2's smooth L1, or a Fast R-CNN head's).

    The loss normalises itself (GHM-R by its count of regression entries, GHM Eq. 19), so the
    detector does not divide it by its count of positives.
    """

    def forward(
        self,
        pred_deltas_per_level: List[torch.Tensor],
        target_deltas_per_level: List[torch.Tensor],
        valid_per_level: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """
        Args:
            pred_deltas_per_level: one ``[P_l, 4]`` tensor per level: the predicted deltas of
                the positives of level l. A head without levels (the RoI head) passes one.
            target_deltas_per_level: the target deltas, same shapes.
            valid_per_level: None, or one bool mask per level (``[P_l]`` per box or
                ``[P_l, 4]`` per coordinate); False entries add no loss.

        Returns:
            Tensor: the scalar loss.
        """
        raise NotImplementedError

    def metrics(self) -> Dict[str, float]:
        """As :meth:`ClassificationLoss.metrics`."""
        return {}


def check_loss_type(loss: nn.Module, base: type, argument: str) -> nn.Module:
    """Return ``loss`` if it subclasses ``base``, else raise a TypeError that says so.

    Detectors call this at construction, so that a loss written for another interface fails
    there rather than with a shape error inside the first training step.
    """
    if not isinstance(loss, base):
        raise TypeError(
            f"{argument} is a {type(loss).__module__}.{type(loss).__qualname__}, which does not "
            f"subclass hpf.losses.{base.__name__}: subclass it (see hpf/losses/contract.py) to "
            "use the loss here"
        )
    return loss
