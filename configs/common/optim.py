import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

# The HPF, GHM and Sampling-Free papers (mmdetection / maskrcnn-benchmark) decay every
# parameter by 1e-4, normalisation layers included; detectron2's model zoo uses 0 for norms.
SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model object before instantiating the optimizer.
        weight_decay_norm=1e-4,
    ),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)
