# Shapes ATSS with HPF whose loss also writes, on every process, the (gamma_ad, alpha_ad) it
# used and this process's own positive count per level to <record_dir>/hpf.rank<R>.jsonl: a
# multi-process run can then be checked for identical statistics on every rank.
import json
import os

from detectron2.config import LazyCall as L
from detectron2.utils import comm

from hpf.losses import ProgressiveFocalLoss

from ...configs.Shapes.atss_R18h_FPN_hpf import dataloader, lr_multiplier, model, optimizer, train


class PerRankRecordingHPF(ProgressiveFocalLoss):
    def __init__(self, record_dir, **kwargs):
        super().__init__(**kwargs)
        self.record_dir = record_dir

    def forward(self, logits_per_level, targets_per_level, normalizer, valid_per_level=None):
        loss = super().forward(logits_per_level, targets_per_level, normalizer, valid_per_level)
        record = {
            "gamma": self.last_gamma.tolist(),
            "alpha": self.last_alpha.tolist(),
            "local_positives": [float(self.positives(t.float()).sum()) for t in targets_per_level],
        }
        path = os.path.join(self.record_dir, f"hpf.rank{comm.get_rank()}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return loss


# gamma 4 +- 4 keeps gamma_ad off its clamp, so that it shows the pooled statistics.
model.cls_loss = L(PerRankRecordingHPF)(record_dir="???", gamma=4.0, delta=4.0, w=0.5,
                                        sampling="level")
