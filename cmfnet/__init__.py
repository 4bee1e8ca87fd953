"""CmFNet benchmark suite: scribble-supervised 3D cross-modal segmentation."""

__version__ = "0.1.0"
