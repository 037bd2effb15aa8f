constants = dict(
    imagenet_rgb256_mean=[123.675, 116.28, 103.53],
    imagenet_rgb256_std=[58.395, 57.12, 57.375],
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    # MSRA / Detectron1 weights absorb the std into conv1: std 1 for them.
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
)
