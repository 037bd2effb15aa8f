# HPF with one (gamma_ad, alpha_ad) per image from its positives over all levels: our reading of
# HPF Table 5 "per-sample" (the paper does not define a sample; see projects/HPF/README.md).
from .atss_hpf_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss.sampling = "image"
