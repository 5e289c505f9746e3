"""Models and batch embedding (issue 4); distillation and robustness metrics come next (issues 5-6).

Everything here needs the ``models`` extra (torch, timm); tiling, registration
and storage never import it.
"""
