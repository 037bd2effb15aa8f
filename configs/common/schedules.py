from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def multistep(max_iter, steps, warmup_iters=500, warmup_factor=0.001, gamma=0.1):
    """
    Step decay by ``gamma`` at each of ``steps`` after a linear warm-up of ``warmup_iters``
    iterations from ``warmup_factor`` (mmdetection's schedule_1x: 500 iterations from 0.001).
    """
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**i for i in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=warmup_factor,
    )


# COCO schedules at batch 16 (about 7,330 iterations per epoch of ~117k images):
# 1x = 12 epochs with steps at 8 and 11; 1.5x = 18 epochs [12, 16]; 2x = 24 epochs [16, 22].
# The 1x schedule uses detectron2's 90k / 60k / 80k, which the papers' numbers are compared with.
lr_multiplier_1x = multistep(90000, [60000, 80000])
lr_multiplier_1_5x = multistep(132000, [88000, 117300])
lr_multiplier_2x = multistep(176000, [117300, 161300])


def cpu_schedule(max_iter):
    """The short CPU runs on the shapes dataset: x0.1 at 80% and 93%, 50 warm-up iterations."""
    return multistep(max_iter, [int(0.8 * max_iter), int(0.93 * max_iter)], warmup_iters=50)
