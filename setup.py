from setuptools import find_packages, setup

setup(
    name="keras-siglip",
    version="0.1.0",
    description="SigLIP, SigLIP 2 and their family for Keras 3 on JAX, TensorFlow and PyTorch.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_siglip", "keras_siglip.*"]),
    package_data={"keras_siglip": ["presets/*/*.json", "presets/*/*.h5", "presets/*/assets/*/*", "presets/*/*.md"]},
    install_requires=[
        "keras==3.15.1",
        "keras-hub==0.32.0",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "jax[cpu]==0.10.2",
        "numpy>=1.26,<3",
        "sentencepiece==0.2.3",
        "safetensors==0.8.0",
        "scipy==1.17.1",
        "pillow>=10",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Sharded backups (keras_siglip.callbacks.ShardedBackupAndRestore).
        "orbax": ["orbax-checkpoint==0.12.8"],
        "test": [
            "pytest>=8",
            "pytest-xdist==3.8.0",
            "hypothesis==6.170.15",
            "torch==2.13.0",
            "transformers==5.23.0",
            "orbax-checkpoint==0.12.8",
        ],
    },
    entry_points={"console_scripts": ["keras-siglip=keras_siglip.cli:main"]},
)
