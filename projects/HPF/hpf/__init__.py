"""HPF, Sampling-Free and GHM training ingredients for detectron2 detectors."""

__version__ = "0.1.0"
