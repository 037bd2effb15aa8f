"""
The gradient density of a trained dense detector: the GHM paper's argument (Li et al.,
"Gradient Harmonized Single-stage Detector", Fig. 1 and 2) measured on a model.

An *entry* of the classification is one (anchor, class) logit x of a valid (not ignored)
anchor, with target y = 1 for the anchor's class and 0 otherwise; its gradient norm under
binary cross-entropy is g = |sigmoid(x) - y| (GHM Eq. 3). A converged model has a huge number
of very easy entries near g = 0 and a second bump of very hard ones near g = 1 (Fig. 2, and
Fig. 1, left). GHM-C weights each entry by beta = N / GD(g), the inverse of the gradient density
over equal bins of [0, 1] (Eq. 9-10), so that the total gradient norm of a non-empty bin is N /
(number of non-empty bins) x its mean g: nearly flat, where cross-entropy's is dominated by the
easy entries (Fig. 1, right).

An entry of the regression is one coordinate of d = predicted delta - target delta of a
positive anchor (target deltas from the detector's own ``box2box_transform``); its gradient
norm under ASL1 = sqrt(d^2 + mu^2) - mu is |d| / sqrt(d^2 + mu^2) (GHM Eq. 17-18). The deltas
are in the detector's own units: mu = 0.02 was chosen for RetinaNet's unscaled deltas, while
ATSS divides them by (0.1, 0.1, 0.2, 0.2) (5-10x larger errors, norms nearer 1).

:func:`dense_gradient_norms` runs a detector (backbone, head, anchors, its own
``label_anchors``) on a batch and returns these norms; :class:`GradientDensity` accumulates their
histograms over batches (per bin sums only, so that any number of images fits in memory) and
:meth:`GradientDensity.summary` gives the histograms, the GHM weights of the whole set (one
density, no EMA) and the per-bin gradient contributions of CE, focal loss and GHM-C (ASL1 and
GHM-R for the boxes). Bins and weights are those of ``hpf.losses.GHMCLoss``: equal bins, the top
one closed (g = 1 falls in it), beta_j = N / (R_j x number of non-empty bins), 0 for empty bins.
"""
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances

from hpf.losses import GHMCLoss

__all__ = [
    "DenseGradientNorms",
    "GradientDensity",
    "asl1_gradient_norm",
    "bin_edges",
    "classification_gradient_norm",
    "dense_gradient_norms",
    "focal_loss_gradient_norm",
    "ghm_weights",
    "gradient_norm_histogram",
    "normalized",
]

# The thresholds of the summary fractions (g < t and g > t): the two bumps of GHM Fig. 2.
SUMMARY_THRESHOLDS = (0.01, 0.1, 0.5, 0.9, 0.99)

_binners = {}


def _binner(bins):
    """A GHMCLoss holding the bin edges and bin lookup of ``bins`` bins (cached)."""
    if bins not in _binners:
        _binners[bins] = GHMCLoss(bins=bins, momentum=0.0)
    return _binners[bins]


def bin_edges(bins):
    """
    The nominal edges j / bins of the bins on [0, 1] (the top bin includes 1).

    Args:
        bins (int): the number of bins.

    Returns:
        list[float]: ``bins + 1`` edges.
    """
    return [j / bins for j in range(bins + 1)]


def classification_gradient_norm(logits, targets):
    """
    g = |sigmoid(x) - y| (GHM Eq. 3), float32.

    Args:
        logits (Tensor): classification logits x.
        targets (Tensor): their 0/1 targets y, same shape.
    """
    return (torch.sigmoid(logits.float()) - targets.float()).abs()


def asl1_gradient_norm(d, mu=0.02):
    """
    |d| / sqrt(d^2 + mu^2): the gradient norm of ASL1 w.r.t. d (GHM Eq. 18), float32.

    Args:
        d (Tensor): regression errors, predicted - target delta.
        mu (float): the ASL1 parameter.
    """
    d = d.float()
    return d.abs() / torch.sqrt(d * d + mu * mu)


def focal_loss_gradient_norm(g, positive, gamma=2.0, alpha=0.25):
    """
    |dFL/dx| of the sigmoid focal loss FL = -alpha_t (1 - p_t)^gamma log(p_t), written with the
    cross-entropy gradient norm g = 1 - p_t: alpha_t g^gamma (g - gamma (1 - g) log(1 - g)).

    Args:
        g (Tensor): gradient norms |sigmoid(x) - y| in [0, 1].
        positive (Tensor): bool, same shape: y = 1 (weight alpha) or y = 0 (1 - alpha).
        gamma, alpha: the focal loss's parameters; ``alpha < 0`` turns the weight off.
    """
    g = g.float()
    # (1 - g) log(1 - g) -> 0 at g = 1; log1p keeps the easy entries (g ~ 1e-4) accurate.
    log_term = torch.where(g < 1, (1 - g) * torch.log1p(-g.clamp(max=1 - 1e-7)), 0.0)
    norm = g.pow(gamma) * (g - gamma * log_term)
    if alpha >= 0:
        norm = norm * torch.where(positive, alpha, 1 - alpha)
    return norm


def _check_norms(name, g):
    if g.numel() and not bool(((g >= 0) & (g <= 1)).all()):
        raise ValueError(f"{name}: gradient norms must be in [0, 1] (NaN or inf predictions?)")


def gradient_norm_histogram(g, bins=30):
    """
    The number of gradient norms in each of ``bins`` equal bins of [0, 1], with the bins of
    ``GHMCLoss`` (edges[j] <= g < edges[j + 1], g = 1 in the top bin); int64, sums to ``g.numel()``.

    Args:
        g (Tensor): gradient norms in [0, 1], any shape; NaN or values outside raise ValueError.
        bins (int): the number of bins.
    """
    g = g.detach().reshape(-1).float()
    _check_norms("gradient_norm_histogram", g)
    return torch.bincount(_binner(bins).bin_index(g), minlength=bins)


def ghm_weights(counts):
    """
    The GHM weight of each bin for one density over the whole set (no EMA): beta_j = N / GD
    with GD the unit-region density (GHM Eq. 9-10), in the official code's form
    N / (R_j x number of non-empty bins), 0 for an empty bin; what ``GHMCLoss`` (and
    ``GHMRLoss``) with ``momentum=0`` multiplies the loss of an entry of bin j by, before dividing
    the sum by N. The weights of all entries sum to N.

    Args:
        counts (Tensor): R_j, the entries in each bin.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    nonempty = counts > 0
    total = counts.sum()
    return torch.where(nonempty, total / (counts * nonempty.sum()).clamp_min(1), 0.0)


def normalized(values):
    """
    ``values`` divided by their sum (left as they are when it is 0), float64: each curve of
    GHM Fig. 1 (right) sums to 1, so that they compare on one log scale.

    Args:
        values (Tensor or list): per-bin totals.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    total = values.sum()
    return values / total if total > 0 else values


class DenseGradientNorms(NamedTuple):
    """The gradient norms of one batch (:func:`dense_gradient_norms`)."""

    cls_g: torch.Tensor  # [E]: |sigmoid(x) - y| of every entry of the valid anchors
    cls_positive: torch.Tensor  # [E] bool: y = 1
    box_d: torch.Tensor  # [P, 4]: predicted - target deltas of the positive anchors
    num_anchors: int  # valid anchors (E = num_anchors x classes)


def _gt_instances(batched_inputs, images):
    out = []
    for x, size in zip(batched_inputs, images.image_sizes):
        inst = x.get("instances")
        if inst is None:  # an image without annotations: all its anchors are background
            inst = Instances(tuple(size), gt_boxes=Boxes(torch.zeros(0, 4)),
                             gt_classes=torch.zeros(0, dtype=torch.long))
        out.append(inst)
    return out


@torch.no_grad()
def dense_gradient_norms(model, batched_inputs):
    """
    The classification and regression gradient norms of a dense detector on one batch: its
    backbone and head on the images, its anchors, and its own ``label_anchors`` on the
    ground truth (what its training loss sees, ignored anchors left out). Run the model in
    eval mode (batch norm statistics of the checkpoint).

    Args:
        model: a detectron2 ``DenseDetector`` whose head returns (class logits, box deltas, ...)
            and which has ``anchor_generator``, ``label_anchors`` and ``box2box_transform``
            (RetinaNet, FCOS, ``hpf.modeling.ATSS``).
        batched_inputs (list[dict]): the training format: "image" and "instances" (with
            ``gt_boxes`` and ``gt_classes``; an image without "instances" has no object).

    Returns:
        DenseGradientNorms
    """
    if not isinstance(model, DenseDetector):
        raise TypeError(f"{type(model).__name__} is not a dense detector (detectron2's "
                        f"DenseDetector: RetinaNet, FCOS, ATSS)")
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    num_classes = model.num_classes
    logits = cat([permute_to_N_HWA_K(x, num_classes) for x in predictions[0]], dim=1)
    deltas = cat([permute_to_N_HWA_K(x, 4) for x in predictions[1]], dim=1)
    anchors = model.anchor_generator(features)
    gt_instances = [x.to(model.device) for x in _gt_instances(batched_inputs, images)]
    gt_labels, gt_boxes = model.label_anchors(anchors, gt_instances)
    labels = torch.stack(gt_labels)  # [B, R]: class, num_classes = background, -1 = ignored
    valid = labels >= 0
    pos = valid & (labels != num_classes)

    targets = F.one_hot(labels[valid], num_classes + 1)[:, :num_classes]
    g = classification_gradient_norm(logits[valid], targets)
    # Target deltas of the positives only (background rows hold no box).
    pos_anchors = Boxes.cat(anchors).tensor.expand(len(labels), -1, -1)[pos]
    target_deltas = model.box2box_transform.get_deltas(pos_anchors, torch.stack(gt_boxes)[pos])
    d = deltas[pos].float() - target_deltas.float()
    return DenseGradientNorms(g.reshape(-1).cpu(), targets.bool().reshape(-1).cpu(), d.cpu(),
                              int(valid.sum()))


class GradientDensity:
    """
    Histograms of classification and regression gradient norms accumulated over batches: per
    bin the count, the sum of g (plain CE) and the sum of the focal loss's gradient norm; the
    GHM weights need the density of the whole set, so they are applied in :meth:`summary`.

    Args:
        bins: equal bins on [0, 1] (M of GHM Eq. 9; 30 as GHM-C's default).
        mu: the ASL1 parameter of the regression norms (0.02, the paper's).
        gamma, alpha: the focal loss compared with (2 and 0.25, RetinaNet's).
        thresholds: the summary fractions of entries with g below / above each.
    """

    def __init__(self, bins=30, mu=0.02, gamma=2.0, alpha=0.25,
                 thresholds: Sequence[float] = SUMMARY_THRESHOLDS):
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        self.bins, self.mu, self.gamma, self.alpha = int(bins), float(mu), gamma, alpha
        self.thresholds = tuple(float(t) for t in thresholds)
        zeros = lambda: torch.zeros(self.bins, dtype=torch.float64)  # noqa: E731
        self.cls_counts, self.cls_pos_counts = zeros(), zeros()
        self.cls_grad_ce, self.cls_grad_focal = zeros(), zeros()
        self.box_counts, self.box_grad = zeros(), zeros()
        self.cls_below = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self.cls_above = torch.zeros_like(self.cls_below)
        self.num_images = self.num_anchors = self.num_positives = 0

    def _bin_sums(self, j, values):
        return torch.zeros(self.bins, dtype=torch.float64).index_add_(0, j, values.double())

    def add_classification(self, g, positive):
        """Add entries: gradient norms ``g`` and whether their target is 1 (``positive``)."""
        g, positive = g.detach().reshape(-1).float().cpu(), positive.reshape(-1).bool().cpu()
        _check_norms("classification", g)
        j = _binner(self.bins).bin_index(g)
        self.cls_counts += torch.bincount(j, minlength=self.bins).double()
        self.cls_pos_counts += torch.bincount(j[positive], minlength=self.bins).double()
        self.cls_grad_ce += self._bin_sums(j, g)
        self.cls_grad_focal += self._bin_sums(
            j, focal_loss_gradient_norm(g, positive, self.gamma, self.alpha))
        t = torch.tensor(self.thresholds)
        # Chunked: [entries, thresholds] comparisons of a large image would be large.
        for chunk in g.split(1 << 20):
            self.cls_below += (chunk[:, None] < t).sum(0).double()
            self.cls_above += (chunk[:, None] > t).sum(0).double()

    def add_regression(self, d):
        """Add regression errors d = predicted - target delta (any shape, one entry each)."""
        g = asl1_gradient_norm(d.detach().reshape(-1).cpu(), self.mu)
        _check_norms("regression", g)
        j = _binner(self.bins).bin_index(g)
        self.box_counts += torch.bincount(j, minlength=self.bins).double()
        self.box_grad += self._bin_sums(j, g)

    def add(self, norms: DenseGradientNorms, num_images=0):
        """Add a batch of :func:`dense_gradient_norms` (of ``num_images`` images)."""
        self.add_classification(norms.cls_g, norms.cls_positive)
        self.add_regression(norms.box_d)
        self.num_images += num_images
        self.num_anchors += norms.num_anchors
        self.num_positives += len(norms.box_d)

    def summary(self):
        """
        A JSON-able dict: ``bin_edges``; per bin, ``classification.counts`` (and
        ``positive_counts``, the entries with y = 1), ``fraction`` (of the entries),
        ``ghm_weights`` and ``contribution.{ce, focal, ghm}`` (each normalised to sum to 1: the
        share of the total gradient norm each bin contributes, GHM Fig. 1, right); ``regression``
        likewise with ``contribution.{asl1, ghm}``; the fractions of classification entries
        below and above each threshold; the number of images, valid anchors, entries,
        positive anchors and regression entries.
        """
        def as_list(x):
            return [float(v) for v in x]

        cls_weights = ghm_weights(self.cls_counts)
        box_weights = ghm_weights(self.box_counts)
        entries = float(self.cls_counts.sum())
        return {
            "bins": self.bins,
            "bin_edges": bin_edges(self.bins),
            "num_images": self.num_images,
            "num_anchors": self.num_anchors,
            "num_entries": int(entries),
            "num_positives": self.num_positives,
            "num_box_entries": int(self.box_counts.sum()),
            "classification": {
                "counts": [int(c) for c in self.cls_counts],
                "positive_counts": [int(c) for c in self.cls_pos_counts],
                "fraction": as_list(normalized(self.cls_counts)),
                "ghm_weights": as_list(cls_weights),
                "contribution": {
                    "ce": as_list(normalized(self.cls_grad_ce)),
                    "focal": as_list(normalized(self.cls_grad_focal)),
                    "ghm": as_list(normalized(cls_weights * self.cls_grad_ce)),
                },
                "fraction_below": {f"{t:g}": float(n) / max(entries, 1)
                                   for t, n in zip(self.thresholds, self.cls_below)},
                "fraction_above": {f"{t:g}": float(n) / max(entries, 1)
                                   for t, n in zip(self.thresholds, self.cls_above)},
                "focal": {"gamma": self.gamma, "alpha": self.alpha},
            },
            "regression": {
                "mu": self.mu,
                "counts": [int(c) for c in self.box_counts],
                "fraction": as_list(normalized(self.box_counts)),
                "ghm_weights": as_list(box_weights),
                "contribution": {
                    "asl1": as_list(normalized(self.box_grad)),
                    "ghm": as_list(normalized(box_weights * self.box_grad)),
                },
            },
        }
