"""Distillation of a pathology foundation model into a small ViT (paper §3.1): crops, data, networks, training.

Nothing is imported here: :mod:`pipeline.distill.config` is read by the
command lines before torch is (it checks a job's hyperparameters in a
second); the modules that need torch import it themselves.
"""
