"""
Foreground statistics of the training data for Sampling-Free's optimal bias initialisation
(conference paper Eq. 9-10: pi = N_f / (N C)) and adaptive test threshold (N_f / N).

N_f and N are counted with the detector's own anchors and ``label_anchors`` (ignored anchors
excluded) over the first ``num_images`` training images of every process, summed over
processes.
"""
import json
import logging
import math
import os

import torch
from detectron2.utils import comm

from hpf.losses import adaptive_threshold, optimal_prior, prior_bias

__all__ = ["count_foreground_anchors", "initialize_auto_priors", "needs_foreground_stats"]

logger = logging.getLogger(__name__)


def needs_foreground_stats(model) -> bool:
    return getattr(model, "prior_prob", None) == "auto" or getattr(
        model, "auto_test_score_thresh", False
    )


def _anchors_for(model, image_size):
    """The detector's anchors for a padded image of ``image_size``, without a forward pass:
    each FPN level of stride s has ceil(H / s) x ceil(W / s) locations (stride-2 3x3 convs
    with padding 1 halve a size rounding up)."""
    shapes = model.backbone.output_shape()
    h, w = image_size
    features = [
        torch.empty(1, 0, math.ceil(h / shapes[f].stride), math.ceil(w / shapes[f].stride),
                    device=model.device)
        for f in model.head_in_features
    ]
    return model.anchor_generator(features)


@torch.no_grad()
def count_foreground_anchors(model, data_loader, num_images):
    """(N_f, N): foreground and non-ignored anchors over ``num_images`` images of this process
    (at least one batch), summed over all processes."""
    counts = torch.zeros(2, dtype=torch.float64, device=model.device)
    seen = 0
    for batch in data_loader:
        images = model.preprocess_image(batch)
        anchors = _anchors_for(model, images.tensor.shape[-2:])
        gt_instances = [x["instances"].to(model.device) for x in batch]
        labels = torch.stack(model.label_anchors(anchors, gt_instances)[0])
        valid = labels >= 0
        counts[0] += (valid & (labels != model.num_classes)).sum()
        counts[1] += valid.sum()
        seen += len(batch)
        if seen >= num_images:
            break
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(counts)
    return counts[0].item(), counts[1].item()


def initialize_auto_priors(model, data_loader, num_images=1000, output_dir=None):
    """
    For a detector with ``prior_prob="auto"`` or ``test_score_thresh="auto"``: counts the
    foreground statistics, sets the classification bias and/or the test threshold, logs them
    and writes ``foreground_stats.json`` into ``output_dir``. Returns the record, or None
    when the model needs nothing.
    """
    if not needs_foreground_stats(model):
        return None
    was_training = model.training
    n_f, n = count_foreground_anchors(model, data_loader, num_images)
    model.train(was_training)
    if n <= 0:
        raise RuntimeError("No anchor was labelled in the images read for the foreground "
                           "statistics: check the training dataset.")
    model.set_foreground_stats(n_f, n)
    pi = optimal_prior(n_f, n, model.num_classes)
    record = {
        "num_foreground_anchors": n_f,
        "num_anchors": n,
        "num_classes": model.num_classes,
        "images_per_process": num_images,
        "num_processes": comm.get_world_size(),
        "prior_prob": pi if model.prior_prob == "auto" else model.prior_prob,
        "prior_bias": prior_bias(pi) if model.prior_prob == "auto" else None,
        "adaptive_threshold": adaptive_threshold(n_f, n),
        "test_score_thresh": model.test_score_thresh,
    }
    logger.info(f"Foreground statistics of the training data: {record}")
    if output_dir and comm.is_main_process():
        with open(os.path.join(output_dir, "foreground_stats.json"), "w") as f:
            json.dump(record, f, indent=2)
    return record
