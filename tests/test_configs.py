"""Every config under configs/ loads and its model instantiates (no weights are loaded)."""
import glob
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from conftest import REPO

CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if os.sep + "common" + os.sep not in p
)


def test_configs_are_found():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_loads_and_model_instantiates(path):
    cfg = LazyConfig.load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{path} lacks '{key}'"
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0
    # The optimizer and schedule instantiate against the model too.
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert len(optimizer.param_groups) > 0
    scheduler = instantiate(cfg.lr_multiplier)
    assert 0 < scheduler(0.5) <= 1.0
