"""Loading a finished ``train_net.py`` run for the analyses."""
import importlib
import os

__all__ = ["load_dense_run"]


def load_dense_run(run_dir, checkpoint="model_final.pth", device="cpu"):
    """
    A dense-detector run rebuilt from its output directory.

    Args:
        run_dir (str): an output directory of ``train_net.py``, holding ``config.yaml`` and
            the checkpoint.
        checkpoint (str): the checkpoint's file name in ``run_dir``.
        device (str): where the model goes.

    Returns:
        (config, model): the LazyConfig and the model in eval mode with the checkpoint loaded.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling.meta_arch.dense_detector import DenseDetector

    importlib.import_module("hpf.data")  # registers the datasets the config names

    for name in ("config.yaml", checkpoint):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"No {os.path.join(run_dir, name)}: has the run finished?")
    cfg = LazyConfig.load(os.path.join(run_dir, "config.yaml"))
    model = instantiate(cfg.model)
    if not isinstance(model, DenseDetector):
        raise ValueError(f"{run_dir}: the model is a {type(model).__name__}, not a dense detector "
                         f"(detectron2's DenseDetector: RetinaNet, FCOS, ATSS)")
    DetectionCheckpointer(model).load(os.path.join(run_dir, checkpoint))
    return cfg, model.to(device).eval()
