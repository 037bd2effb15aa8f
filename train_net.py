#!/usr/bin/env python
"""
Trains and evaluates a detector described by a LazyConfig file (detectron2's
tools/lazyconfig_train_net.py, with this project's additions).

    python train_net.py --config-file configs/Shapes/atss_R18h_FPN_hpf_demo.py
    python train_net.py --config-file CFG --num-gpus 8 train.output_dir=out
    python train_net.py --config-file CFG --eval-only train.init_checkpoint=out/model_final.pth
    python train_net.py --config-file CFG --resume            # continue from last_checkpoint

On CPU (train.device=cpu), --num-gpus N starts N processes talking over gloo.
"""
import json
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from torch.nn.parallel import DistributedDataParallel
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import hpf.data  # noqa: F401  registers the project's datasets
from hpf.collect_env import collect_env_info_hpf
from hpf.config import apply_overrides
from hpf.engine.checkpoint import AtomicCheckpointer, resume_or_load
from hpf.engine.hooks import CheckpointOnSignal, RecordLevelStatistics
from hpf.engine.trainers import FiniteLossAMPTrainer, FiniteLossTrainer, GradientClipHook
from hpf.modeling.priors import initialize_auto_priors

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    if cfg.get("test_time_augmentation") is not None:
        # Evaluate through a test-time-augmentation wrapper of the trained model (e.g.
        # hpf.modeling.DenseDetectorWithTTA); training and checkpoints are the model's own.
        cfg.test_time_augmentation.model = unwrap_model(model)
        model = instantiate(cfg.test_time_augmentation)
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(ret)
        names = cfg.dataloader.test.dataset.names
        names = names if isinstance(names, str) else "+".join(names)
        path = os.path.join(cfg.train.output_dir, f"eval_{names}.json")
        with open(path, "w") as f:
            json.dump(ret, f, indent=2)
        logger.info(f"Evaluation results saved to {path}")
    return ret


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return model


def unwrap_model(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_ddp(cfg, model):
    kwargs = dict(cfg.train.get("ddp", {}))
    if torch.device(cfg.train.device).type == "cpu":
        kwargs["device_ids"] = None  # DistributedDataParallel rejects device ids for CPU modules
    return create_ddp_model(model, **kwargs)


def level_statistics_hook(cfg, model):
    """``RecordLevelStatistics`` when ``train.level_statistics.enabled``, else None."""
    options = dict(cfg.train.get("level_statistics") or {})
    if not options.pop("enabled", False):
        return None
    return RecordLevelStatistics(model, cfg.train.output_dir, **options)


def do_train(args, cfg):
    model = build_model(cfg)
    logger.info("Model:\n{}".format(model))

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = wrap_ddp(cfg, model)
    if cfg.train.amp.enabled and not torch.cuda.is_available():
        raise RuntimeError("train.amp.enabled=True needs CUDA; set train.amp.enabled=False on CPU.")
    trainer = (FiniteLossAMPTrainer if cfg.train.amp.enabled else FiniteLossTrainer)(
        model, train_loader, optim
    )
    # Checkpoints are renamed into place once written: a job killed mid-save still resumes.
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            GradientClipHook(**cfg.train.clip_grad) if cfg.train.get("clip_grad") else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            level_statistics_hook(cfg, model),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
            # SIGTERM (preemption, requeue, scancel): checkpoint after this iteration, stop.
            CheckpointOnSignal(checkpointer),
        ]
    )

    if not args.resume and checkpointer.has_checkpoint():
        raise RuntimeError(
            f"train.output_dir={cfg.train.output_dir} already holds the checkpoints of a run "
            f"(last_checkpoint: {checkpointer.get_checkpoint_file()}). A new run would write "
            "over them: pass --resume to continue that run, or choose another "
            "train.output_dir."
        )
    resume_or_load(checkpointer, cfg.train.init_checkpoint, args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished: start at the next one.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
        # Sampling-Free's "auto" prior / threshold: statistics of the training data, before
        # the first iteration (a resumed run has them in its checkpoint).
        initialize_auto_priors(
            unwrap_model(model), train_loader, cfg.train.get("foreground_stats_images", 1000),
            cfg.train.output_dir,
        )
    # EvalHook evaluates every eval_period iterations (never if <= 0) and once at the end.
    trainer.train(start_iter, cfg.train.max_iter)


def check_device(cfg):
    """A CUDA ``train.device`` on a machine without a usable GPU: say which key to set,
    before torch fails with its driver message."""
    device = torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={cfg.train.device}, but this machine has no usable CUDA GPU. Add "
            "train.device=cpu to the command line (with --num-gpus N, N CPU processes train "
            "together over gloo), or run where a GPU is available."
        )


def setup(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides(cfg, args.opts)
    check_device(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="hpf")
    if comm.is_main_process():
        with open(os.path.join(cfg.train.output_dir, "env.txt"), "w") as f:
            f.write(collect_env_info_hpf() + "\n")
    return cfg


def main(args):
    # From-scratch CPU training slows 4x once weights underflow to denormals.
    torch.set_flush_denormal(True)
    cfg = setup(args)

    if args.eval_only:
        model = wrap_ddp(cfg, build_model(cfg))
        checkpointer = DetectionCheckpointer(model, cfg.train.output_dir)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.resume_or_load("", resume=True)
        else:
            resume_or_load(checkpointer, cfg.train.init_checkpoint, resume=False)
        results = do_test(cfg, model)
    else:
        results = do_train(args, cfg)
    close_process_group()
    return results


def close_process_group():
    """Tear the process group down once every process is done. Left to interpreter exit, a gloo
    group's threads can be destroyed while still joinable, and the process aborts
    ("terminate called without an active exception") after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        comm.synchronize()
        torch.distributed.destroy_process_group()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
