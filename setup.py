"""Installs volfnet and its console scripts.

torch is required as ``torch>=2.1`` with no upper pin: ``pip install -e .`` on a GPU machine
takes the ordinary CUDA build from PyPI, while the README's commands pin ``torch==2.13.0``
next to the install, which on a CPU-only machine with a local wheel installs in seconds.
"""

from setuptools import find_packages, setup

setup(
    name="volfnet",
    version="0.1.0",
    description="Self-configuring 3D medical image segmentation with Volume Fusion (VolF) pretraining",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["volfnet", "volfnet.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "scikit-image>=0.21",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "tqdm>=4.60",
        "threadpoolctl>=3",
        "matplotlib>=3.6",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "volfnet_plan_and_preprocess=volfnet.cli.plan_and_preprocess:main",
            "volfnet_convert_msd=volfnet.cli.convert_msd:main",
            "volfnet_demo=volfnet.cli.demo:main",
            "volfnet_evaluate=volfnet.cli.evaluate:main",
            "volfnet_predict=volfnet.cli.predict:main",
            "volfnet_pretrain=volfnet.cli.pretrain:main",
            "volfnet_train=volfnet.cli.train:main",
        ]
    },
)
