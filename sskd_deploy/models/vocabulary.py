"""Zero-shot by name: a model pretrained on a named vocabulary, restricted to a target's class names.

Grounded-SAM2 segments whatever its text prompt names. The project's stand-in teacher has a closed
vocabulary instead (the names in its checkpoint's IOSpec), and the prompt becomes a slice: the rows
of its class heads (the transformer decoder's class embedding and, when present, the semantic head)
for the target's names in the target's order, then the no-object row. The sliced model's softmax is
the vocabulary model's, renormalised over the target's names, so it predicts the target's classes
with no training at all; stage 1 then adapts it. A name outside the vocabulary is refused with the
vocabulary listed, unless the caller hands in freshly initialised rows for it (a student starting from
a whole pretrained model learns its classes anyway, as a COCO-pretrained model fine-tuned on new
classes does: known names keep their rows, new names start from new ones).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from sskd_deploy.config.model import ModelConfig
from sskd_deploy.errors import InputError
from sskd_deploy.models.checkpoint import Checkpoint, read_checkpoint

# Parameters with one row per class plus the no-object row (the last).
CLASS_ROW_PREFIXES = ("transformer_decoder.class_embed.", "semantic_head.")


def vocabulary_rows(vocabulary: tuple[str, ...], names: tuple[str, ...], source: Path, *,
                    allow_new: bool = False) -> list[int | None]:
    """Index in ``vocabulary`` of each of ``names``, in ``names``' order; :class:`InputError` naming
    ``source`` when a name is repeated, or missing (the vocabulary is listed) unless ``allow_new``
    (then a missing name's index is None)."""
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise InputError(source, f"class names {repeated} appear more than once in the target's classes")
    missing = [n for n in names if n not in vocabulary]
    if missing and not allow_new:
        raise InputError(
            source, f"the target's class name(s) {missing} are not in this teacher's vocabulary "
            f"{list(vocabulary)}: a closed-vocabulary teacher predicts only names it was pretrained on. Rename "
            "the classes, pretrain on your names, or set train.teacher_weights: null (random initialisation)")
    return [vocabulary.index(n) if n in vocabulary else None for n in names]


def restrict_to_names(checkpoint: Checkpoint, names: tuple[str, ...], source: Path, *,
                      fresh: dict[str, Tensor] | None = None) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The model config and state dict of ``checkpoint`` with its class heads sliced to ``names``.

    ``fresh``: the state dict of a freshly initialised model for ``names``; when given, a name outside
    the vocabulary takes its class rows from it instead of being refused.
    """
    vocabulary = tuple(checkpoint.spec.class_names)
    rows = vocabulary_rows(vocabulary, tuple(names), source, allow_new=fresh is not None) + [len(vocabulary)]
    state = {}
    for key, value in checkpoint.state_dict.items():
        if key.startswith(CLASS_ROW_PREFIXES):
            if value.shape[0] != len(vocabulary) + 1:
                raise InputError(source, f"{key} has {value.shape[0]} rows, expected {len(vocabulary) + 1} "
                                 "(one per vocabulary name + no-object)")
            value = torch.stack([value[r] if r is not None else fresh[key][i].to(value.dtype)
                                 for i, r in enumerate(rows)])
        state[key] = value
    return checkpoint.model_config.with_classes(len(names)), state


def new_names(checkpoint: Checkpoint, names: tuple[str, ...]) -> list[str]:
    """The ``names`` a whole checkpoint's vocabulary lacks (their class rows start fresh)."""
    return [n for n in names if n not in tuple(checkpoint.spec.class_names)]


def is_model_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole-model sskd-deploy checkpoint (not a bare encoder's weights)."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".safetensors", ".pt", ".pth"):
        return False
    try:
        read_checkpoint(path)
    except InputError:
        return False
    return True
