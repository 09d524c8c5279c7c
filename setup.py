"""Installs volfnet and its console scripts.

torch is required as ``torch>=2.3`` with no upper pin: ``pip install -e .`` on a GPU machine
takes the ordinary CUDA build from PyPI, while the README's commands pin ``torch==2.13.0``
next to the install, which on a CPU-only machine with a local wheel installs in seconds.

The minimums are the true ones: Python 3.11 (``typing.Self``, ``BaseException.add_note``),
torch 2.3 (``torch.amp.GradScaler(device)``); ``tests/test_code_quality.py`` imports every
module and runs ruff with ``target-version = "py311"`` so newer syntax fails the tests. Only
packages the code imports are declared (batchgenerators pulls scikit-image in itself).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# One home for the version: volfnet/__init__.py (read, not imported: torch need not be installed yet).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "volfnet" / "__init__.py").read_text(), re.M).group(1)
TEST = ["pytest>=7", "ruff>=0.9", "mypy>=1.10"]  # the tests include the lint and type checks

setup(
    name="volfnet",
    version=VERSION,
    description="Self-configuring 3D medical image segmentation with Volume Fusion (VolF) pretraining",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["volfnet", "volfnet.*"]),
    install_requires=[
        "torch>=2.3",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "tqdm>=4.60",
        "threadpoolctl>=3",
        "matplotlib>=3.6",
    ],
    # openvino: the optional faster CPU backend of volfnet_predict (--backend openvino); 2024.0 is
    # the first release whose ov.convert_model takes a PyTorch module with the properties used.
    extras_require={"test": TEST, "dev": TEST, "openvino": ["openvino>=2024.0"]},
    entry_points={
        "console_scripts": [
            "volfnet_plan_and_preprocess=volfnet.cli.plan_and_preprocess:main",
            "volfnet_convert_msd=volfnet.cli.convert_msd:main",
            "volfnet_demo=volfnet.cli.demo:main",
            "volfnet_evaluate=volfnet.cli.evaluate:main",
            "volfnet_predict=volfnet.cli.predict:main",
            "volfnet_pretrain=volfnet.cli.pretrain:main",
            "volfnet_train=volfnet.cli.train:main",
            "volfnet_ensemble=volfnet.cli.ensemble:main",
            "volfnet_apply_postprocessing=volfnet.cli.apply_postprocessing:main",
            "volfnet_export_model=volfnet.cli.export_model:main",
            "volfnet_install_model=volfnet.cli.install_model:main",
            "volfnet_cv_summary=volfnet.cli.cv_summary:main",
            "volfnet_find_best_configuration=volfnet.cli.find_best_configuration:main",
        ]
    },
)
