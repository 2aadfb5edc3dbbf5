"""textclf: batch text classification with Apache Beam, tf.Transform and Keras.

Dataflow workers install this same file (`--setup_file ./setup.py`), so it must stay installable
without the repository's tests, benchmarks or data.
"""

from setuptools import find_packages, setup

# Pinned to the versions the code is tested with; the three TFX-family packages move in lockstep.
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "pyarrow==25.0.1",
    "keras==3.15.1",
    # keras.callbacks.TensorBoard (train's live logs); same release line as tensorflow.
    "tensorboard==2.21.0",
    "numpy>=2.0,<3",
    "matplotlib==3.11.2",
]

setup(
    name="textclf",
    version="0.1.0",
    description="Batch text classification: Beam + tf.Transform preprocessing, Keras training, "
    "Arrow-batched scoring.",
    # 3.11 at least: the code reads TOML with tomllib (3.11's standard library). The lock
    # (requirements.lock) and the images are for 3.11; 3.12 is allowed by the pins but untested.
    python_requires=">=3.11,<3.13",
    classifiers=[
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
    ],
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"],
        # benchmarks/accuracy_20ng.py's TF-IDF + LinearSVC reference only; never imported by
        # the package.
        "bench": ["scikit-learn==1.9.1"],
    },
    entry_points={"console_scripts": ["textclf=pipeline.cli:main"]},
)
