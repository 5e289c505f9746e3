"""Entry points for users of the stores: :mod:`distillpath.data` holds the PyTorch datasets.

The pipeline's own code lives in the top-level packages ``tiling``,
``storage``, ``registration``, ``pipeline`` and ``flows``; this package is the
public name under which analysts import what they need for training.
"""
