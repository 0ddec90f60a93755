"""Packaging for the MuRAG / RA-CM3 JAX reimplementation.

The exact, tested versions of every dependency live in requirements.txt and
constraints/lock.txt; `make install` applies both. install_requires below only names
the direct dependencies with the pinned versions of the core stack.
"""
import setuptools

CORE = [
    "jax[cpu]==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "tensorboard",
    "seqio==0.0.20",
    "tensorflow==2.20.0",
    "tensorflow-text==2.20.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",
    "array-record",
    "scann==1.4.2",
    "gin-config==0.5.0",
    "pyfarmhash==0.5.1",
    "sentencepiece",
    "pillow",
    "pyarrow",
    "numpy",
    "scipy",
]

setuptools.setup(
    name="murag-jax",
    version="0.1.0",
    description="MuRAG and RA-CM3 in JAX/Flax, built the T5X way (gin, seqio, orbax, ScaNN).",
    packages=setuptools.find_packages(include=["murag", "murag.*", "ra_cm3", "ra_cm3.*", "tasks", "tasks.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=CORE,
    extras_require={
        "test": ["pytest", "pytest-timeout", "torch==2.13.0", "transformers==4.57.*", "safetensors"],
        # Beam lets the large converters run on a distributed runner. It is optional and for a
        # separate conversion environment: apache-beam 2.77.0 needs protobuf<7, pyarrow<26
        # and pillow<13, below the stack's pins (docs: README, "Apache Beam").
        "beam": ["apache-beam==2.77.0"],
    },
    include_package_data=True,
)
