#!/usr/bin/env python
"""Installs the `hpf` package (projects/HPF/hpf): HPF, Sampling-Free and GHM on detectron2."""
from setuptools import find_packages, setup

setup(
    name="hpf",
    version="0.1.0",
    description="Hierarchical progressive focus, Sampling-Free and GHM losses for detectron2",
    package_dir={"": "projects/HPF"},
    packages=find_packages("projects/HPF"),
    python_requires=">=3.10",
    # The environment (torch CUDA build, detectron2 from the sal-detectron2 wheel) is pinned in
    # requirements.txt and built by tools/setup_env.sh; see README.md.
    install_requires=[],
)
