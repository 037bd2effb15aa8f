"""
Foreground statistics of the training data for Sampling-Free's optimal bias initialisation
(conference paper Eq. 9-10: pi = N_f / (N C)) and adaptive test threshold (N_f / N).

Any module of a model can ask for them by implementing

* ``needs_foreground_stats() -> bool``;
* ``count_foreground(image_size, gt_instances, feature_shapes) -> (N_f, N)``: foreground and
  non-ignored anchors of one batch (padded ``image_size``, the backbone's ``output_shape()``),
  labelled by the module's own matcher;
* ``set_foreground_stats(N_f, N)`` and ``foreground_stats_record(N_f, N) -> dict``.

The dense detectors (``PluggableLossMixin``) and ``SamplingFreeRPN`` do. The counts cover the
first ``num_images`` training images of every process, summed over processes, once before
training; the modules keep them in buffers, so checkpoints carry them.
"""
import json
import logging
import math
import os

import torch
from detectron2.utils import comm

__all__ = [
    "anchors_for_image_size",
    "count_foreground_anchors",
    "foreground_stats_modules",
    "initialize_auto_priors",
    "needs_foreground_stats",
]

logger = logging.getLogger(__name__)


def needs_foreground_stats(module) -> bool:
    check = getattr(module, "needs_foreground_stats", None)
    return callable(check) and bool(check())


def foreground_stats_modules(model):
    """[(name, module)] of the modules of ``model`` that need the statistics ("" = model)."""
    return [(name, m) for name, m in model.named_modules() if needs_foreground_stats(m)]


def anchors_for_image_size(anchor_generator, strides, image_size, device):
    """The anchors of a padded image of ``image_size`` without a forward pass: a level of
    stride s has ceil(H / s) x ceil(W / s) locations (stride-2 convs with padding 1 and
    detectron2's max-pool P6 both halve a size rounding up)."""
    h, w = image_size
    features = [
        torch.empty(1, 0, math.ceil(h / s), math.ceil(w / s), device=device) for s in strides
    ]
    return anchor_generator(features)


@torch.no_grad()
def count_foreground_anchors(model, data_loader, num_images, module=None):
    """(N_f, N) of ``module`` (default: the model itself) over ``num_images`` images of this
    process (at least one batch), summed over all processes."""
    module = model if module is None else module
    counts = torch.zeros(2, dtype=torch.float64, device=model.device)
    feature_shapes = model.backbone.output_shape()
    seen = 0
    for batch in data_loader:
        images = model.preprocess_image(batch)
        gt_instances = [x["instances"].to(model.device) for x in batch]
        n_f, n = module.count_foreground(images.tensor.shape[-2:], gt_instances, feature_shapes)
        counts[0] += n_f
        counts[1] += n
        seen += len(batch)
        if seen >= num_images:
            break
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(counts)
    return counts[0].item(), counts[1].item()


def initialize_auto_priors(model, data_loader, num_images=1000, output_dir=None):
    """
    For every module of ``model`` with an ``"auto"`` prior or threshold: counts the foreground
    statistics, applies them (classification bias and/or test threshold), logs them and writes
    ``foreground_stats.json`` into ``output_dir`` (one record, or a list when several modules
    need them). Returns that record / list, or None when nothing needs them.
    """
    modules = foreground_stats_modules(model)
    if not modules:
        return None
    was_training = model.training
    records = []
    for name, module in modules:
        n_f, n = count_foreground_anchors(model, data_loader, num_images, module)
        if n <= 0:
            raise RuntimeError("No anchor was labelled in the images read for the foreground "
                               "statistics: check the training dataset.")
        module.set_foreground_stats(n_f, n)
        record = {"module": name or type(module).__name__, "num_foreground_anchors": n_f,
                  "num_anchors": n, "images_per_process": num_images,
                  "num_processes": comm.get_world_size()}
        record.update(module.foreground_stats_record(n_f, n))
        logger.info(f"Foreground statistics of the training data: {record}")
        records.append(record)
    model.train(was_training)
    result = records[0] if len(records) == 1 else records
    if output_dir and comm.is_main_process():
        with open(os.path.join(output_dir, "foreground_stats.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result
