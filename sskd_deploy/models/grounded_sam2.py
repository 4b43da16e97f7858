"""The Grounded-SAM2 teacher: Grounding DINO finds boxes for the class names, SAM2 gives each a mask.

Built on the Hugging Face ``transformers`` classes (``GroundingDinoForObjectDetection``,
``Sam2Model``) and loaded from one local directory::

    WEIGHTS/grounding_dino/  config.json, model.safetensors, tokenizer.json, tokenizer_config.json
    WEIGHTS/sam2/            config.json, model.safetensors

which is what ``save_pretrained`` writes (and what stage 1 writes for the adapted teacher, so a
stage directory is itself a weights directory). Nothing is downloaded unless asked.

Labeling one batch (METHOD.md section 2): the text prompt is the class names joined by ``" . "``;
a Grounding DINO query's score for a class is the highest token probability over that class
name's tokens, its box score the best class score; the ``max_instances`` best queries go to SAM2
as box prompts (one mask per box, ``multimask_output=False``). Both models see the letterboxed
input frame, Grounding DINO at the run's input size and SAM2 resized to its square
``image_size``. :meth:`GroundedSam2Teacher.predict_queries` returns the :class:`Teacher` contract
(``class_prob`` with a no-object column, ``mask_prob`` on the stride-4 grid of the input), so the
pseudo-label store applies the box threshold, binarises at the mask threshold and resolves overlaps
exactly as it does for every other teacher.

Stage-1 adaptation (:meth:`GroundedSam2Teacher.forward_train`): Grounding DINO's own detection loss
(Hungarian-matched focal class + L1 + GIoU on boxes taken from the instance masks) plus SAM2's mask
loss (BCE + Dice) with the ground-truth boxes, jittered, as prompts. The dense map L_pxl acts on
is SAM2's stride-16 image embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.config.model import IMAGENET_MEAN, IMAGENET_STD
from sskd_deploy.config.teacher import GROUNDING_DIR, SAM2_DIR, TEACHER_PARTS, GroundedSam2Config
from sskd_deploy.errors import InputError, SSKDError
from sskd_deploy.models.criterion import dice_loss, sigmoid_bce_loss

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_REQUIRED = {
    GROUNDING_DIR: (("config.json",), _WEIGHT_FILES, ("tokenizer_config.json",), ("tokenizer.json", "vocab.txt")),
    SAM2_DIR: (("config.json",), _WEIGHT_FILES),
}
# Parts that read the image before any prompt: the "encoder" parameter group (lr x backbone mult).
ENCODER_PARTS = ("grounding_backbone", "grounding_text", "sam2_image_encoder")


def missing_weight_files(root: Path) -> dict[str, list[str]]:
    """What ``root`` lacks, per sub-directory: ``{"grounding_dino": ["<path> (or ...)", ...], ...}``.

    Empty lists mean that part is complete. A group of alternatives (e.g. ``model.safetensors`` or
    ``pytorch_model.bin``) is one entry naming the first and listing the others.
    """
    root = Path(root)
    missing: dict[str, list[str]] = {}
    for sub, groups in _REQUIRED.items():
        missing[sub] = []
        for group in groups:
            if not any((root / sub / name).is_file() for name in group):
                others = f" (or {', '.join(group[1:])})" if len(group) > 1 else ""
                missing[sub].append(f"{root / sub / group[0]}{others}")
    return missing


def weights_help(root: Path, missing: dict[str, list[str]], cfg: GroundedSam2Config) -> str:
    lines = [line for sub in missing for line in missing[sub]]
    return ("Grounded-SAM2 weights are incomplete; missing:\n" + "\n".join(f"  - {line}" for line in lines)
            + f"\nPut the Hugging Face checkpoints there as save_pretrained writes them: {Path(root) / GROUNDING_DIR}/ "
              f"(Grounding DINO with its tokenizer, e.g. {cfg.hub_grounding_dino}) and {Path(root) / SAM2_DIR}/ "
              f"(SAM2, e.g. {cfg.hub_sam2}); or pass --allow-download to fetch the missing ones with from_pretrained.")


def class_prompt(tokenizer: Any, class_names: Sequence[str], max_len: int) -> tuple[str, list[list[int]], int]:
    """The text prompt, each class's token positions in it, and its token count.

    ``"person . traffic light . car ."``: underscores become spaces; the phrases are separated by
    the ``"."`` token, which (like ``[CLS]``/``[SEP]``) belongs to no class.
    """
    phrases = [str(name).replace("_", " ").strip() for name in class_names]
    bad = [name for name, phrase in zip(class_names, phrases) if not phrase or "." in phrase]
    if bad:
        raise SSKDError(f"class names {bad} cannot be prompted: a name must be non-empty and contain no '.'")
    prompt = " . ".join(phrases) + " ."
    ids = list(tokenizer(prompt)["input_ids"])
    if len(ids) > max_len:
        raise SSKDError(f"the class prompt is {len(ids)} tokens, more than Grounding DINO's max_text_len "
                         f"{max_len}: use fewer or shorter class names")
    dot = tokenizer.convert_tokens_to_ids(".")
    special = set(tokenizer.all_special_ids)
    spans: list[list[int]] = [[] for _ in phrases]
    phrase = 0
    for position, token in enumerate(ids):
        if token == dot:
            phrase += 1
        elif token not in special and phrase < len(spans):
            spans[phrase].append(position)
    empty = [name for name, span in zip(class_names, spans) if not span]
    if phrase != len(phrases) or empty:
        raise SSKDError(f"the tokenizer did not split the prompt {prompt!r} into one phrase per class "
                         f"(classes without tokens: {empty})")
    return prompt, spans, len(ids)


def masks_to_boxes_cxcywh(masks: Tensor) -> Tensor:
    """Normalised ``(cx, cy, w, h)`` boxes ``(N, 4)`` enclosing bool masks ``(N, H, W)`` (pixel edges)."""
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(1).float()
    y1 = torch.where(rows, ar_h, -1).amax(1).float() + 1
    x0 = torch.where(cols, ar_w, w).amin(1).float()
    x1 = torch.where(cols, ar_w, -1).amax(1).float() + 1
    boxes = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], dim=1)
    return boxes.clamp(0, 1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def jitter_boxes(boxes_xyxy: Tensor, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """Move each side of normalised ``xyxy`` boxes by up to ``noise`` x the box size (uniform), clamped to [0, 1]."""
    if noise <= 0 or boxes_xyxy.numel() == 0:
        return boxes_xyxy
    size = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).repeat_interleave(2, dim=-1)[..., [0, 2, 1, 3]]
    delta = torch.rand(boxes_xyxy.shape, generator=generator, device="cpu").to(boxes_xyxy.device) * 2 - 1
    moved = boxes_xyxy + delta * noise * size
    lo, hi = torch.minimum(moved[..., :2], moved[..., 2:]), torch.maximum(moved[..., :2], moved[..., 2:])
    return torch.cat([lo, hi], dim=-1).clamp(0, 1)


def state_hash(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): the identity of loaded weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class GroundedSam2Teacher(nn.Module):
    """Grounding DINO + SAM2 as a :class:`~sskd_deploy.models.teacher.Teacher`.

    Args:
        grounding: a ``GroundingDinoForObjectDetection``.
        sam2: a ``Sam2Model``.
        tokenizer: Grounding DINO's text tokenizer (BERT).
        class_names: the dataset's classes, in label order.
        cfg: thresholds, instance cap and trainable parts.
    """

    def __init__(self, *, grounding: nn.Module, sam2: nn.Module, tokenizer: Any, class_names: Sequence[str],
                 cfg: GroundedSam2Config) -> None:
        super().__init__()
        self.grounding, self.sam2, self.tokenizer, self.cfg = grounding, sam2, tokenizer, cfg
        self.class_names = tuple(class_names)
        max_len = int(grounding.config.max_text_len)
        self.prompt, spans, _ = class_prompt(tokenizer, self.class_names, max_len)
        text = tokenizer([self.prompt], return_tensors="pt")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            value = text.get(key)
            self.register_buffer(key, torch.zeros_like(text["input_ids"]) if value is None else value,
                                 persistent=False)
        token_map = torch.zeros(len(spans), max_len, dtype=torch.bool)
        for c, span in enumerate(spans):
            token_map[c, span] = True
        self.register_buffer("token_map", token_map, persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.sam_size = int(sam2.config.prompt_encoder_config.image_size)
        self.feature_channels = int(sam2.config.vision_config.fpn_hidden_size)
        self._parts = self._assign_parts()
        unknown = set(cfg.trainable) - set(TEACHER_PARTS)
        if unknown:
            raise ValueError(f"unknown teacher parts {sorted(unknown)}; have {list(TEACHER_PARTS)}")
        for name, params in self._parts.items():
            for p in params:
                p.requires_grad_(name in cfg.trainable)

    # -- structure ---------------------------------------------------------------------------

    def _assign_parts(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one named part (heads claim the box/class heads the decoder shares)."""
        g, s = self.grounding.model, self.sam2
        sources: dict[str, list[Any]] = {
            "grounding_heads": [self.grounding.bbox_embed, self.grounding.class_embed],
            "grounding_backbone": [g.backbone],
            "grounding_text": [g.text_backbone, g.text_projection],
            "grounding_encoder": [g.input_proj_vision, g.level_embed, g.encoder, g.enc_output, g.enc_output_norm,
                                  g.encoder_output_bbox_embed, g.encoder_output_class_embed],
            "grounding_decoder": [g.decoder, g.query_position_embeddings],
            "sam2_image_encoder": [s.vision_encoder.backbone],
            "sam2_neck": [s.vision_encoder.neck, s.no_memory_embedding],
            "sam2_prompt_encoder": [s.prompt_encoder, s.shared_image_embedding],
            "sam2_mask_decoder": [s.mask_decoder],
        }
        parts: dict[str, list[nn.Parameter]] = {name: [] for name in sources}
        seen: set[int] = set()
        for name, items in sources.items():
            for item in items:
                params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
                for p in params:
                    if id(p) not in seen:
                        seen.add(id(p))
                        parts[name].append(p)
        orphans = [n for n, p in self.named_parameters() if id(p) not in seen]
        if orphans:  # a transformers version with parameters this mapping does not know
            raise ValueError(f"Grounded-SAM2 parameters in no part: {orphans[:5]}")
        return parts

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {name: list(params) for name, params in self._parts.items()}

    def parameter_counts(self) -> dict[str, int]:
        counts = {name: sum(p.numel() for p in params) for name, params in self._parts.items()}
        counts["grounding_dino"] = sum(p.numel() for p in self.grounding.parameters())
        counts["sam2"] = sum(p.numel() for p in self.sam2.parameters())
        counts["total"] = counts["grounding_dino"] + counts["sam2"]
        return counts

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder`` (image/text backbones, lr x backbone mult) and ``decoder`` (the rest), trainable only."""
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": []}
        for name, params in self._parts.items():
            groups["encoder" if name in ENCODER_PARTS else "decoder"] += [p for p in params if p.requires_grad]
        return groups

    # -- shared pieces -------------------------------------------------------------------------

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (or 0..255 float) ``(B, 3, H, W)`` -> ImageNet-normalised float, as both models were trained."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def _text(self, batch: int) -> dict[str, Tensor]:
        return {k: getattr(self, k).expand(batch, -1) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def class_scores(self, logits: Tensor) -> Tensor:
        """Token logits ``(B, Q, T)`` -> per-class probabilities ``(B, Q, C)``: max over each class's tokens."""
        probs = logits.float().sigmoid()
        t = min(probs.shape[-1], self.token_map.shape[1])
        masked = probs[..., None, :t].masked_fill(~self.token_map[:, :t], 0.0)
        return masked.amax(dim=-1)

    def image_embeddings(self, pixels: Tensor) -> list[Tensor]:
        """SAM2's multi-level image embeddings (gradient flows when its encoder parts train).

        ``pixels``: normalised ``(B, 3, H, W)`` of the whole input frame, resized to ``image_size``.
        Returns the levels the mask decoder reads, finest first; the last is the stride-16 map.
        """
        square = F.interpolate(pixels, size=(self.sam_size, self.sam_size), mode="bilinear", align_corners=False)
        out = self.sam2.get_image_features(square, return_dict=True)
        maps = list(out.fpn_hidden_states)
        maps[-1] = maps[-1] + self.sam2.no_memory_embedding
        batch = pixels.shape[0]
        return [m.permute(1, 2, 0).reshape(batch, -1, *size)
                for m, size in zip(maps, self.sam2.backbone_feature_sizes)]

    def box_mask_logits(self, embeddings: list[Tensor], boxes_xyxy: Tensor, grid: tuple[int, int]) -> Tensor:
        """One SAM2 mask per box: normalised ``xyxy`` ``(B, N, 4)`` -> logits ``(B, N, *grid)``."""
        if boxes_xyxy.shape[1] == 0:
            return boxes_xyxy.new_zeros((boxes_xyxy.shape[0], 0, *grid))
        out = self.sam2(image_embeddings=embeddings, input_boxes=boxes_xyxy * self.sam_size, multimask_output=False)
        low = out.pred_masks[:, :, 0]  # (B, N, S/4, S/4) over the whole square frame
        return F.interpolate(low.float(), size=grid, mode="bilinear", align_corners=False)

    def _select(self, class_prob: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """The ``max_instances`` best queries by box score: their class probs and normalised cxcywh boxes."""
        k = min(self.cfg.max_instances, class_prob.shape[1])
        index = class_prob.amax(dim=-1).topk(k, dim=1).indices
        take = lambda t: torch.gather(t, 1, index[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        return take(class_prob), take(boxes.float())

    @staticmethod
    def _with_no_object(class_prob: Tensor) -> Tensor:
        return torch.cat([class_prob, 1.0 - class_prob.amax(dim=-1, keepdim=True)], dim=-1)

    # -- the Teacher protocol ------------------------------------------------------------------

    @torch.no_grad()
    def predict_queries(self, images: Tensor, *, on_stage: Callable[[str], None] | None = None) -> dict[str, Tensor]:
        """uint8 ``(B, 3, H, W)`` -> ``class_prob (B, N, C+1)``, ``mask_prob (B, N, H/4, W/4)``, ``boxes (B, N, 4)``.

        ``on_stage(name)`` is called as each stage ends (``grounding_dino``, ``sam2_image_encoder``,
        ``sam2_mask_decoder``): what a benchmark uses to split the teacher's time.
        """
        mark = on_stage or (lambda name: None)
        pixels = self.normalize(images)
        out = self.grounding(pixel_values=pixels, **self._text(pixels.shape[0]))
        class_prob, boxes = self._select(self.class_scores(out.logits), out.pred_boxes)
        mark("grounding_dino")
        embeddings = self.image_embeddings(pixels)
        mark("sam2_image_encoder")
        grid = (images.shape[-2] // 4, images.shape[-1] // 4)
        logits = self.box_mask_logits(embeddings, cxcywh_to_xyxy(boxes), grid)
        mark("sam2_mask_decoder")
        return {"class_prob": self._with_no_object(class_prob), "mask_prob": logits.sigmoid(), "boxes": boxes,
                "mask_logits": logits}

    def dense_features(self, images: Tensor) -> Tensor:
        """SAM2's stride-16 image embedding ``(B, C, S/16, S/16)``, the map L_pxl acts on."""
        return self.image_embeddings(self.normalize(images))[-1]

    def loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out = self.forward_train(images, targets)
        return {k: v for k, v in out.items() if k in ("loss", "box", "mask_bce", "mask_dice")}

    def forward_train(self, images: Tensor, targets: list[dict[str, Tensor]], *,
                      generator: torch.Generator | None = None, queries: bool = False) -> dict[str, Tensor]:
        """The supervised loss on one batch, and what L_pxl needs.

        Args:
            images: uint8 ``(B, 3, H, W)`` (the weak view).
            targets: per image ``{"labels": int64 (N,), "masks": bool (N, H, W)}`` on the input frame.
            generator: randomness of the prompt-box jitter.
            queries: also return the sampler's inputs (detached): ``pred_logits (B, N, C+1)`` as
                log-probabilities and ``pred_masks (B, N, H/4, W/4)`` mask logits of the best boxes.

        Returns:
            ``loss`` (= Grounding DINO's weighted detection loss ``box`` + mask_weight * ``mask_bce``
            + dice_weight * ``mask_dice``) and ``features``, SAM2's stride-16 embedding (with gradient).
        """
        pixels = self.normalize(images)
        labels = [{"class_labels": t["labels"].long(), "boxes": masks_to_boxes_cxcywh(t["masks"].bool())}
                  for t in targets]
        out = self.grounding(pixel_values=pixels, **self._text(pixels.shape[0]), labels=labels)
        embeddings = self.image_embeddings(pixels)
        bce, dice = self._mask_loss(embeddings, labels, targets, generator)
        result = {"box": out.loss, "mask_bce": bce, "mask_dice": dice, "features": embeddings[-1],
                  "loss": out.loss + self.cfg.mask_weight * bce + self.cfg.dice_weight * dice}
        if queries:
            with torch.no_grad():
                class_prob, boxes = self._select(self.class_scores(out.logits.detach()), out.pred_boxes.detach())
                grid = (images.shape[-2] // 4, images.shape[-1] // 4)
                detached = [e.detach() for e in embeddings]
                result["pred_masks"] = self.box_mask_logits(detached, cxcywh_to_xyxy(boxes), grid)
                result["pred_logits"] = self._with_no_object(class_prob).clamp_min(1e-6).log()
        return result

    def _mask_loss(self, embeddings: list[Tensor], labels: list[dict], targets: list[dict],
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """SAM2 prompted with each (jittered) ground-truth box; BCE and Dice against its mask, averaged over masks."""
        counts = [len(t["class_labels"]) for t in labels]
        most = max(counts, default=0)
        zero = embeddings[-1].sum() * 0.0
        if most == 0:
            return zero, zero
        batch = len(labels)
        boxes = embeddings[-1].new_zeros((batch, most, 4))
        boxes[..., 2:] = 1.0  # padding prompts: whole-frame boxes, their masks are not scored
        for i, t in enumerate(labels):
            if counts[i]:
                boxes[i, :counts[i]] = jitter_boxes(cxcywh_to_xyxy(t["boxes"]), self.cfg.box_noise, generator)
        side = self.sam_size // 4
        logits = self.box_mask_logits(embeddings, boxes, (side, side))
        predicted = torch.cat([logits[i, :counts[i]] for i in range(batch)])
        truth = torch.cat([F.interpolate(t["masks"][:, None].float(), size=(side, side), mode="bilinear",
                                         align_corners=False)[:, 0] for t in targets if len(t["masks"])])
        truth = (truth >= 0.5).float()
        n = predicted.shape[0]
        flat_p, flat_t = predicted.flatten(1), truth.flatten(1)
        num = torch.tensor(float(n), device=flat_p.device)
        return sigmoid_bce_loss(flat_p, flat_t, num), dice_loss(flat_p, flat_t, num)

    def labeling_rule(self) -> dict[str, Any]:
        """The pseudo-label thresholds this teacher implies (see :class:`PseudoLabelConfig`)."""
        c = self.cfg
        return {"score_threshold": 0.0, "class_threshold": c.box_threshold, "mask_threshold": c.mask_threshold,
                "min_area": c.min_area, "max_instances": c.max_instances, "resolve_overlaps": True,
                "batch_size": c.batch_size}


# -- loading and saving ------------------------------------------------------------------------

def load_grounded_sam2(root: Path | None, *, cfg: GroundedSam2Config, class_names: Sequence[str],
                       allow_download: bool | None = None) -> GroundedSam2Teacher:
    """The teacher from ``root`` (see the module docstring for the layout).

    A missing part is an :class:`InputError` listing every missing file, unless ``allow_download``
    (default ``cfg.allow_download``): then that part comes from the Hub (``cfg.hub_*``) through
    ``from_pretrained``'s usual download and cache.
    """
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection, Sam2Model

    download = cfg.allow_download if allow_download is None else allow_download
    if root is None and not download:
        raise InputError("train.grounded_sam2.weights", "no Grounded-SAM2 weights directory given "
                         "(set it, or pass --weights DIR / --allow-download)")
    root = Path(root) if root is not None else Path("<hub>")
    missing = missing_weight_files(root)
    if any(missing.values()) and not download:
        raise InputError(root, weights_help(root, missing, cfg))
    source = {sub: (str(root / sub), True) if not missing[sub] else (hub, False)
              for sub, hub in ((GROUNDING_DIR, cfg.hub_grounding_dino), (SAM2_DIR, cfg.hub_sam2))}
    if all(local for _, local in source.values()):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # local files load in well under a second; keep the console clean
    try:
        where, local = source[GROUNDING_DIR]
        grounding = GroundingDinoForObjectDetection.from_pretrained(where, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
        where, local = source[SAM2_DIR]
        sam2 = Sam2Model.from_pretrained(where, local_files_only=local)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise InputError(where, f"cannot load the Grounded-SAM2 weights: {str(err).splitlines()[0]}") from None
    return GroundedSam2Teacher(grounding=grounding.float(), sam2=sam2.float(), tokenizer=tokenizer,
                               class_names=class_names, cfg=cfg)


def save_grounded_sam2(teacher: GroundedSam2Teacher, root: Path) -> None:
    """Write ``root/grounding_dino/`` (model, config, tokenizer) and ``root/sam2/`` (model, config).

    The caller makes this atomic (:func:`sskd_deploy.io.atomic_directory`); safetensors only.
    """
    root = Path(root)
    teacher.grounding.save_pretrained(root / GROUNDING_DIR, safe_serialization=True)
    teacher.tokenizer.save_pretrained(root / GROUNDING_DIR)
    teacher.sam2.save_pretrained(root / SAM2_DIR, safe_serialization=True)


# -- the real configurations, for parameter counts ---------------------------------------------

def large_configs() -> tuple[Any, Any]:
    """Grounding DINO with Swin-L and SAM2.1 Hiera-L, as published (random weights, no files needed).

    Swin-L (Grounding DINO's large backbone): embed 192, depths 2/2/18/2, heads 6/12/24/48,
    window 12, stages 2-4 as features. Hiera-L (SAM2.1 large): embed 144, blocks 2/6/36/4, heads
    2/4/8/16, windows 8/4/16/8, global attention in blocks 23, 33, 43.
    """
    from transformers import GroundingDinoConfig, Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig, SwinConfig

    swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                      image_size=384, out_features=["stage2", "stage3", "stage4"])
    grounding = GroundingDinoConfig(backbone_config=swin)
    hiera = Sam2HieraDetConfig(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                               embed_dim_per_stage=[144, 288, 576, 1152],
                               num_attention_heads_per_stage=[2, 4, 8, 16], window_size_per_stage=[8, 4, 16, 8],
                               global_attention_blocks=[23, 33, 43],
                               window_positional_embedding_background_size=[7, 7])
    sam2 = Sam2Config(vision_config=Sam2VisionConfig(backbone_config=hiera,
                                                     backbone_channel_list=[1152, 576, 288, 144]))
    return grounding, sam2


BERT_SPECIAL_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}


def local_tokenizer(words: Sequence[str] = (), *, vocab_size: int = 30522) -> Any:
    """A BERT WordPiece tokenizer built here, for Grounding DINO with random weights (no download).

    The vocabulary has BERT's special tokens and ``.``/``?`` at BERT's ids (Grounding DINO finds
    phrase boundaries by those ids), every lower-case letter alone and as a ``##`` continuation (so
    any name tokenizes), and each of ``words`` as one token, as BERT's real vocabulary has common
    class names; the rest are unused slots up to ``vocab_size``. Prompt lengths, and so the text
    encoder's cost, are then close to those of the published tokenizer.
    """
    from transformers import BertTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [*letters, *("##" + c for c in letters), "-", "_", "/"]
    pieces += [w for w in dict.fromkeys(str(w).lower() for w in words) if w and w not in pieces and w not in ".?"]
    free = [i for i in range(200, vocab_size) if i not in BERT_SPECIAL_IDS]
    if len(pieces) > len(free):
        raise ValueError(f"vocab_size {vocab_size} is too small for {len(pieces)} tokens")
    tokens = {i: f"[unused{i}]" for i in range(vocab_size)}
    tokens.update(BERT_SPECIAL_IDS)
    tokens.update(zip(free, pieces))
    return BertTokenizer(vocab={token: i for i, token in tokens.items()})


def count_parameters_of(grounding_cfg: Any, sam2_cfg: Any) -> dict[str, int]:
    """Parameters of a Grounded-SAM2 built from two configs on the meta device (no memory, well under a second)."""
    from transformers import GroundingDinoForObjectDetection, Sam2Model

    with torch.device("meta"):
        grounding, sam2 = GroundingDinoForObjectDetection(grounding_cfg), Sam2Model(sam2_cfg)
    parts = {
        "grounding_dino.image_backbone": grounding.model.backbone,
        "grounding_dino.text_backbone": nn.ModuleList([grounding.model.text_backbone,
                                                        grounding.model.text_projection]),
        "sam2.image_encoder": sam2.vision_encoder.backbone,
    }
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    counts["grounding_dino"] = sum(p.numel() for p in grounding.parameters())
    counts["sam2"] = sum(p.numel() for p in sam2.parameters())
    counts["total"] = counts["grounding_dino"] + counts["sam2"]
    return counts


def count_large_parameters() -> dict[str, int]:
    """Parameters of the real Grounded-SAM2: Grounding DINO Swin-L + SAM2.1 Hiera-L (see :func:`large_configs`)."""
    return count_parameters_of(*large_configs())


def count_directory_parameters(root: Path) -> dict[str, int]:
    """Parameters of the Grounded-SAM2 in a weights directory, from its two config.json files only."""
    from transformers import GroundingDinoConfig, Sam2Config

    root = Path(root)
    for sub in (GROUNDING_DIR, SAM2_DIR):
        if not (root / sub / "config.json").is_file():
            raise InputError(root / sub / "config.json", "not found (a Grounded-SAM2 weights directory has "
                                                         f"{GROUNDING_DIR}/config.json and {SAM2_DIR}/config.json)")
    return count_parameters_of(GroundingDinoConfig.from_pretrained(root / GROUNDING_DIR),
                               Sam2Config.from_pretrained(root / SAM2_DIR))
