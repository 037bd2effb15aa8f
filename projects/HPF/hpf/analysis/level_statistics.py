"""
What a dense detector's classification does on each pyramid level during training: the
positives of each level (the HPF paper's level discrepancy, §3.2 and Fig. 3) and the loss and
gradient that hard and easy entries contribute (its gradient drift, §3.1 and Fig. 2).

An *entry* is one (anchor, class) logit of a valid (not ignored) anchor. It is *positive* when
its target is above 0 and *negative* otherwise; it is *hard* when its binary cross-entropy with
its target exceeds a loss threshold t (hard cases are the samples with large losses, as in
OHEM and the HPF paper) and *easy* otherwise. Binary cross-entropy is used for every
classification loss, so that runs with different losses split their entries by the same rule.
The gradient of an entry is the one the backward pass gives its logit: whatever loss, loss
balance and normalisation the detector trains with.

:class:`LevelStatisticsRecorder` sums these per level during a training step;
``hpf.engine.hooks.RecordLevelStatistics`` writes the sums of every recorded iteration to
``level_statistics.json`` (one JSON object per line) and ``hpf.analysis.level_summaries``
reads them back.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = ["CATEGORIES", "COLUMNS", "LevelStatisticsRecorder", "entry_categories",
           "category_sums", "sums_to_record"]

# The four kinds of entry, in the order of the category index entry_categories gives them.
CATEGORIES = ("pos_hard", "pos_easy", "neg_hard", "neg_easy")
_IGNORED = len(CATEGORIES)

# The columns of a level's row of sums: anchors, positives, then count / loss / grad of each
# category.
COLUMNS = ("anchors", "positives") + tuple(
    f"{quantity}/{category}" for quantity in ("count", "loss", "grad") for category in CATEGORIES
)
_COUNT, _LOSS, _GRAD = 2, 2 + len(CATEGORIES), 2 + 2 * len(CATEGORIES)


def entry_categories(logits, targets, threshold, valid=None):
    """
    The category of each entry and its binary cross-entropy.

    Args:
        logits (Tensor): ``[..., C]`` classification logits.
        targets (Tensor): their targets, same shape: 0 for negatives, above 0 (1, or an IoU
            quality) for positives.
        threshold (float): the loss threshold t; an entry whose cross-entropy exceeds it is hard.
        valid (Tensor or None): a bool mask of the logits' shape without the last dimension
            (per anchor) or with it (per entry); False entries get the category "ignored".

    Returns:
        (Tensor, Tensor): the category of each entry as ``uint8`` (the index into
        :data:`CATEGORIES`, ``len(CATEGORIES)`` for ignored entries) and the float32
        cross-entropy of each entry.
    """
    with torch.no_grad():
        x, y = logits.detach().float(), targets.detach().float()
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        category = (y <= 0).to(torch.uint8) * 2 + (bce <= threshold).to(torch.uint8)
        if valid is not None:
            if valid.dim() == category.dim() - 1:
                valid = valid.unsqueeze(-1)
            category = category.masked_fill(~valid, _IGNORED)
        return category, bce


def category_sums(category, weights=None):
    """``[len(CATEGORIES)]`` float64 sums of ``weights`` (or counts) of the entries of each
    category; ignored entries are left out."""
    weights = None if weights is None else weights.detach().float().flatten()
    sums = torch.bincount(category.flatten().long(), weights=weights, minlength=_IGNORED + 1)
    return sums[:_IGNORED].double()


class LevelStatisticsRecorder:
    """
    Sums, per pyramid level, what :func:`entry_categories` tells of the entries a detector's
    classification loss sees in a training step, and the gradients the backward pass gives
    their logits (through a tensor hook: nothing is computed twice).

    A detector of ``hpf.modeling`` calls :meth:`observe` from its classification loss while
    the recorder is :attr:`active`; :meth:`collect` returns and clears the sums after the
    backward pass.

    Args:
        levels (list[str]): the names of the pyramid levels (``head_in_features``).
        threshold (float): the loss threshold t of hard entries; ln 2 by default: an entry is
            hard when it sits on the wrong side of probability 0.5.
    """

    def __init__(self, levels: List[str], threshold: float = math.log(2.0)):
        if not threshold > 0:
            raise ValueError(f"The loss threshold of hard entries must be > 0, got {threshold}")
        self.levels = list(levels)
        self.threshold = float(threshold)
        self.active = True
        self._sums = None

    def _row(self, level, device):
        if self._sums is None:
            self._sums = torch.zeros(len(self.levels), len(COLUMNS), dtype=torch.float64,
                                     device=device)
        return self._sums[level]

    def observe(
        self,
        logits_per_level: List[torch.Tensor],
        targets_per_level: List[torch.Tensor],
        positive_per_level: List[torch.Tensor],
        valid_per_level: Optional[List[torch.Tensor]] = None,
    ):
        """
        Args:
            logits_per_level: one ``[B, A_l, C]`` tensor per level, as the loss gets them; a
                hook on each adds its gradient to the sums when the backward pass reaches it.
            targets_per_level: their targets (one-hot rows, or IoU qualities), same shapes.
            positive_per_level: ``[B, A_l]`` bool: the positive anchors.
            valid_per_level: None, or ``[B, A_l]`` bool: the anchors that are not ignored.
        """
        if not self.active:
            return
        if len(logits_per_level) != len(self.levels):
            raise ValueError(f"{len(logits_per_level)} levels of logits for the recorder's "
                             f"{len(self.levels)} levels {self.levels}")
        for level, (logits, targets, positive) in enumerate(
                zip(logits_per_level, targets_per_level, positive_per_level)):
            valid = None if valid_per_level is None else valid_per_level[level]
            category, bce = entry_categories(logits, targets, self.threshold, valid)
            row = self._row(level, logits.device)
            anchors = positive.numel() if valid is None else valid.sum()
            positives = positive.sum() if valid is None else (positive & valid).sum()
            row[0] += anchors
            row[1] += positives
            row[_COUNT:_LOSS] += category_sums(category)
            row[_LOSS:_GRAD] += category_sums(category, bce)
            if logits.requires_grad:
                logits.register_hook(self._gradient_hook(row, category))

    @staticmethod
    def _gradient_hook(row, category):
        def add_gradient(grad):
            row[_GRAD:] += category_sums(category, grad.abs())
        return add_gradient

    def collect(self):
        """The ``[levels, len(COLUMNS)]`` float64 sums since the last call (zeros when nothing
        was observed), and a fresh start."""
        sums, self._sums = self._sums, None
        if sums is None:
            sums = torch.zeros(len(self.levels), len(COLUMNS), dtype=torch.float64)
        return sums


def sums_to_record(sums, iteration, levels, threshold, world_size=1):
    """One line of ``level_statistics.json`` from a ``[levels, len(COLUMNS)]`` table of sums:
    ``{"iteration", "threshold", "world_size", "levels", "anchors", "positives", "count",
    "loss", "grad"}``, the last three holding a per-level list for each of :data:`CATEGORIES`."""
    table = sums.tolist()
    column = {name: [row[i] for row in table] for i, name in enumerate(COLUMNS)}
    record = {
        "iteration": int(iteration),
        "threshold": float(threshold),
        "world_size": int(world_size),
        "levels": list(levels),
        "anchors": [int(round(v)) for v in column["anchors"]],
        "positives": [int(round(v)) for v in column["positives"]],
    }
    for quantity in ("count", "loss", "grad"):
        record[quantity] = {
            c: ([int(round(v)) for v in column[f"{quantity}/{c}"]] if quantity == "count"
                else column[f"{quantity}/{c}"])
            for c in CATEGORIES
        }
    return record
