# Training options of the short CPU runs on the embedded shapes dataset.
from .train import train

train.device = "cpu"
train.seed = 0
train.eval_period = 0  # evaluated once at the end
train.log_period = 20
train.checkpointer.period = 100
train.checkpointer.max_to_keep = 2  # plus model_final.pth: a resumable run, not a history
