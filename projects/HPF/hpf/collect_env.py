"""Prints the versions this project runs with: ``python -m hpf.collect_env``."""
import importlib.metadata
import sys

from detectron2.utils.collect_env import collect_env_info

import hpf

_PACKAGES = (
    "sal-detectron2", "torch", "torchvision", "numpy", "fvcore", "iopath", "omegaconf",
    "hydra-core", "pycocotools", "faster-coco-eval", "Pillow", "opencv-python-headless",
    "submitit", "setuptools",
)


def collect_env_info_hpf() -> str:
    lines = [collect_env_info(), f"hpf {hpf.__version__} ({hpf.__file__})", "Installed packages:"]
    for name in _PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        lines.append(f"  {name}=={version}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(collect_env_info_hpf())
    sys.exit(0)
