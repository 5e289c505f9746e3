"""Models, distillation, embedding and robustness metrics (issues 4-6; not built yet)."""
