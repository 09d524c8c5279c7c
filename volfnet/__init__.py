"""volfnet: self-configuring 3D medical image segmentation with Volume Fusion pretraining."""

__version__ = "0.1.0"
