"""Install entry point for hardalign (``pip install -e '.[test]'``)."""
from setuptools import find_packages, setup

setup(
    name="hardalign",
    version="0.1.0",
    description="Hard alignment and hard attention models trained with variational inference "
    "(REINFORCE, NVIL, VIMCO, sequential VIMCO) in PyTorch.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hardalign", "hardalign.*"]),
    package_data={"hardalign": ["data/resources/*"]},
    install_requires=[
        "torch",
        "torchaudio",
        "numpy",
        "scipy",
        "librosa",
        "soundfile",
        "sentencepiece",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "tensorboard",
        "espeakng-loader",
        "mlxtend",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["hardalign=hardalign.cli:main"]},
)
