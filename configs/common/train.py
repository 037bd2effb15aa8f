# Training options read by train_net.py (the shape of detectron2's configs/common/train.py).
train = dict(
    output_dir="./output",
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # mixed precision (detectron2's AMPTrainer; needs CUDA)
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # PeriodicCheckpointer
    clip_grad=None,  # e.g. dict(max_norm=35.0): clip the gradient norm (GHM's configs)
    eval_period=5000,
    log_period=20,
    device="cuda",
    seed=-1,
    # images per process read before training for Sampling-Free's "auto" prior / threshold
    foreground_stats_images=1000,  # < 0: a random seed (logged); >= 0: seed + rank on each process
    # Per-level positives and hard / easy loss and gradient of the classification entries,
    # written to level_statistics.json (hpf.engine.hooks.RecordLevelStatistics; dense
    # detectors). threshold: the loss above which an entry is hard (ln 2: p on the wrong side
    # of 0.5).
    level_statistics=dict(enabled=False, period=1, threshold=0.6931471805599453),
)
