"""Models and batch embedding, distillation (paper §3.1), linear and ridge probes, robustness metrics and reports.

Everything here needs the ``models`` extra (torch, timm); tiling, registration
and storage never import it.
"""
