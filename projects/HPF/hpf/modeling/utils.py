import torch
from detectron2.utils.events import get_event_storage


def log_metrics(module, prefix=""):
    """Logs what ``module.metrics()`` returns (a loss or a loss balance), each name after
    ``prefix``."""
    storage = get_event_storage()
    for name, value in module.metrics().items():
        storage.put_scalar(prefix + name, value)


def check_finite_predictions(predictions, what="box predictions"):
    """
    Raises ``FloatingPointError`` naming the iteration when ``predictions`` (a list of
    tensors) holds NaN or inf. A diverged model otherwise fails later with fvcore's
    "bad box" assertion inside the GIoU loss, which looks like a data error.
    """
    if not torch.isfinite(torch.stack([p.detach().float().abs().amax() for p in predictions
                                       if p.numel()] or [torch.zeros(())])).all():
        raise FloatingPointError(
            f"Loss became NaN or infinite at iteration {get_event_storage().iter}: {what} are "
            "not finite (training diverged). Resume from the last checkpoint with --resume "
            "after fixing the cause (learning rate, data, loss)."
        )
