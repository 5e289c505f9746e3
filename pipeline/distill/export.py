"""Export the EMA student as a timm-loadable safetensors file with a short model card.

The file holds the backbone's own timm parameter names, so
``pipeline.models.build_model(student_name, weights=file)`` and
``python -m flows.embed --model <student_name> --weights file`` load it as is.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from pipeline.distill.config import DistillConfig
from storage.atomic import atomic_path, write_bytes_atomic
from storage.checksum import sha256_of_file


def export_student(
    state: dict[str, torch.Tensor],
    config: DistillConfig,
    stores: list[str],
    steps: int,
    path: Path,
    agreement: dict[str, float | int] | None = None,
) -> Path:
    """Write the backbone ``state`` to ``path`` (safetensors) and ``MODEL_CARD.md`` beside it; returns ``path``.

    ``agreement`` (from :func:`pipeline.distill.agreement.measure_agreement`) goes into the card as a table.
    """
    tensors = {name: value.detach().cpu().contiguous() for name, value in state.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata={"model": config.models.student, "steps": str(steps)})
    digest = sha256_of_file(path)
    parameters = sum(t.numel() for t in tensors.values())
    card = f"""# {config.models.student} distilled from {config.models.teacher}

- File: `{path.name}` (safetensors, timm parameter names), sha256 `{digest}`
- Parameters: {parameters:,}
- Load: `pipeline.models.build_model("{config.models.student}", weights="{path.name}")`, or
  `python -m flows.embed --model {config.models.student} --weights {path.name} ...`
- Embedding: class token ⊕ mean patch token (registers excluded), normalised with the model's mean/std.
- Teacher: `{config.models.teacher}` (weights: `{config.models.teacher_weights}`),
  teacher heads: `{config.heads.teacher_heads}`
- Training: {steps:,} iterations of DINO + iBOT distillation, global batch {config.train.batch_size_total},
  exported weights are the EMA of the student.
- Data: {", ".join(f"`{s}`" for s in stores)}
{_agreement_section(agreement, config.train.agreement_neighbours)}
## Config

```yaml
{yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)}```
"""
    write_bytes_atomic(path.parent / "MODEL_CARD.md", card.encode())
    return path


def _agreement_section(agreement: dict[str, float | int] | None, k: int) -> str:
    """Markdown table of the teacher-student agreement before and after training (and the control's), or nothing."""
    if not agreement:
        return ""
    figures = ((f"knn{k}_overlap", f"{k}-NN overlap"), ("linear_cka", "linear CKA"))
    rows = [
        f"| {label}{against} | {agreement[f'{prefix}{key}_before']:.4f} | {agreement[f'{prefix}{key}_after']:.4f} |\n"
        for prefix, against in (("", ""), ("control_", " with a control random teacher"))
        for key, label in figures
        if f"{prefix}{key}_before" in agreement
    ]
    rows += [
        f"| {label} | {agreement[f'{key}_before']:.4f} | {agreement[f'{key}_after']:.4f} |\n"
        for head, name, tokens in (("dino", "DINO", "class tokens"), ("ibot", "iBOT", "patch tokens"))
        for key, label in (
            (f"{head}_prototype_agreement", f"prototype agreement, {name} head ({tokens})"),
            (
                f"{head}_prototype_chance",
                f"its chance ({agreement.get(f'{head}_teacher_prototypes')} distinct teacher argmaxes)",
            ),
        )
        if f"{key}_before" in agreement
    ]
    return (
        f"\n## Agreement with the teacher\n\nClass token ⊕ mean patch token of the {agreement['tiles']} tiles "
        "held out of training (every M-th tile of each slide, `held_out.json`), whole, resized to "
        "the global-crop size; the student the run started from, then the exported one. A control row compares "
        "the student with a random teacher it never saw: random networks share much of their geometry, and "
        "only a rise above the control's is learnt from the teacher. Prototype agreement: the share of held-out "
        "tiles (patch tokens for iBOT) whose student argmax prototype is the teacher's (teacher logits centred as "
        "its training targets), with its chance (independent draws with the same prototype frequencies); read "
        "from the heads, it is specific to this teacher.\n\n| figure | before | after |\n"
        f"|---|---|---|\n{''.join(rows)}"
    )
