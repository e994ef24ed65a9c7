"""MNIST trainer that tracks its runs in MLflow and versions its models in the MLflow registry."""

__version__ = "0.1.0"
