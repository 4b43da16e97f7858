"""Mask2Former transformer decoder: K learnable queries refined by masked attention over three scales.

Layer ``l`` attends to memory level ``l % 3`` (stride 32 first, as Mask2Former's round robin),
with its cross-attention restricted to the foreground of the previous prediction's masks; then
self-attention among the queries, then an FFN, each sub-layer post-norm (Mask2Former's choice).
The prediction head (class logits + mask logits at stride 4) runs on the initial queries and
after every layer, giving ``num_layers + 1`` predictions: the last is the output, the rest are
deep-supervision targets (``aux_outputs``).

Group DETR (``query_groups`` G > 1): in training the decoder runs G independent groups of K
queries side by side; self-attention stays inside a group (a block-diagonal mask) and the criterion
matches each group one-to-one on its own, so every object gets G positive queries per step instead
of one, which is what speeds up the convergence of set prediction. In eval mode only the first
group runs: the exported graph and every prediction are the plain K-query decoder.

Export notes: sizes are ints fixed at construction; the attention mask is an additive float
tensor built with comparisons and ``where`` (no boolean indexing, no ``.item()``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskd_deploy.config.model import DecoderConfig
from sskd_deploy.models.position import flat_sine_position_encoding

MEMORY_STRIDES = (32, 16, 8)  # the memory levels, in the order layers visit them
NO_OBJECT_PRIOR = 0.5  # initial no-object probability of every query (see TransformerDecoder._init_heads)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them, applied to the last dimension."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def attention_bias(mask_logits: Tensor, size: tuple[int, int], num_heads: int) -> Tensor:
    """Additive cross-attention mask from predicted masks (Mask2Former's masked attention).

    Args:
        mask_logits: ``(B, K, h4, w4)`` mask logits of the previous prediction.
        size: ``(h, w)`` of the memory level the next layer attends to.
        num_heads: attention heads; the mask is repeated per head, batch-major.
    Returns:
        float ``(B * num_heads, K, h * w)``: 0 where the query may look, ``-inf`` where its mask is
        background (sigmoid < 0.5, i.e. logit < 0). A query whose mask is empty at this scale
        keeps the whole map, otherwise its softmax would have no support.
    """
    logits = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False).flatten(2)
    empty = logits.amax(dim=-1, keepdim=True) < 0  # (B, K, 1): nothing would stay visible
    hidden = (logits < 0) & ~empty
    bias = torch.zeros_like(logits).masked_fill(hidden, float("-inf"))
    return bias.unsqueeze(1).expand(-1, num_heads, -1, -1).flatten(0, 1)


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each ``norm(x + dropout(sublayer(x)))``.

    All query tensors are ``(B, K, dim)``; memory and its positions ``(B or 1, S, dim)``.
    """

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, bias: Tensor,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        attended, _ = self.cross_attn(
            queries + query_pos, memory + memory_pos, memory, attn_mask=bias, need_weights=False
        )
        queries = self.norms[0](queries + self.dropout(attended))
        with_pos = queries + query_pos
        attended, _ = self.self_attn(with_pos, with_pos, queries, attn_mask=self_mask, need_weights=False)
        queries = self.norms[1](queries + self.dropout(attended))
        return self.norms[2](queries + self.dropout(self.ffn(queries)))


class TransformerDecoder(nn.Module):
    """Queries -> per-layer class and mask predictions.

    Args:
        config: width, depth, heads, FFN width, number of queries K, dropout.
        in_channels: width of the pixel decoder's multi-scale maps (projected to ``config.dim``).
        mask_dim: width of the stride-4 mask features.
        num_classes: C; the class head has C+1 outputs, the last meaning no-object.
        input_size: ``(H, W)`` of the network input (multiples of 32); fixes the memory sizes.
    """

    def __init__(
        self,
        *,
        config: DecoderConfig,
        in_channels: int,
        mask_dim: int,
        num_classes: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.config = config
        height, width = input_size
        self.memory_sizes = [(height // s, width // s) for s in MEMORY_STRIDES]
        dim = config.dim
        self.num_queries, self.query_groups = config.num_queries, config.query_groups
        self.query_feat = nn.Embedding(config.num_queries * config.query_groups, dim)
        self.query_pos = nn.Embedding(config.num_queries * config.query_groups, dim)
        if config.query_groups > 1:
            group = torch.arange(config.num_queries * config.query_groups) // config.num_queries
            blocked = torch.zeros(len(group), len(group)).masked_fill(group[:, None] != group[None, :], float("-inf"))
            self.register_buffer("group_mask", blocked, persistent=False)
        self.level_embed = nn.Embedding(len(MEMORY_STRIDES), dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, dim, kernel_size=1) if in_channels != dim else nn.Identity()
            for _ in MEMORY_STRIDES
        )
        for level, (h, w) in enumerate(self.memory_sizes):
            # Constants of the config: non-persistent, so checkpoints never carry (or mismatch on) them.
            position = flat_sine_position_encoding(h, w, dim)  # (1, h*w, dim)
            self.register_buffer(f"memory_pos_{level}", position, persistent=False)
        self.layers = nn.ModuleList(
            DecoderLayer(dim=dim, num_heads=config.num_heads, ffn_dim=config.ffn_dim, dropout=config.dropout)
            for _ in range(config.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MLP(in_dim=dim, hidden_dim=dim, out_dim=mask_dim, num_layers=3)
        self._init_weights(num_classes)

    def _init_weights(self, num_classes: int) -> None:
        for name, param in self.named_parameters():
            if param.dim() > 1 and not name.startswith(("query_", "level_embed")):
                nn.init.xavier_uniform_(param)  # as Mask2Former; embeddings keep N(0, 1)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
        # Most queries are matched to no-object, so start each query at NO_OBJECT_PRIOR for it and
        # the rest spread evenly over the classes (instead of 1/(C+1) for no-object); a small weight
        # keeps that prior the same for every query at the start.
        nn.init.normal_(self.class_embed.weight, std=0.01)
        no_object_logit = math.log(NO_OBJECT_PRIOR * num_classes / (1 - NO_OBJECT_PRIOR))
        nn.init.constant_(self.class_embed.bias[-1], no_object_logit)

    def predict(self, queries: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Heads on ``(B, K, dim)`` queries -> class logits ``(B, K, C+1)``, mask logits ``(B, K, H/4, W/4)``.

        ``mask_features`` is ``(B, mask_dim, H/4, W/4)``.
        """
        normed = self.decoder_norm(queries)
        embed = self.mask_embed(normed)  # (B, K, mask_dim)
        # A batched matmul rather than einsum: the plainest op for ONNX, INT8 and TensorRT.
        masks = torch.matmul(embed, mask_features.flatten(2)).unflatten(2, mask_features.shape[-2:])
        return self.class_embed(normed), masks

    def forward(self, multi_scale: list[Tensor], mask_features: Tensor) -> dict[str, Tensor | list]:
        """Run the decoder.

        Args:
            multi_scale: ``[(B, in_channels, H/32, W/32), (.., H/16, W/16), (.., H/8, W/8)]``.
            mask_features: ``(B, mask_dim, H/4, W/4)``.
        Returns:
            ``{"pred_logits": (B, K, C+1), "pred_masks": (B, K, H/4, W/4), "aux_outputs": [{"pred_logits",
            "pred_masks"}, ...]}``; ``aux_outputs`` holds the ``num_layers`` earlier predictions (initial
            queries first).
        """
        memory, memory_pos = [], []
        for level, feature in enumerate(multi_scale):
            tokens = self.input_proj[level](feature).flatten(2).transpose(1, 2)  # (B, h*w, dim)
            memory.append(tokens + self.level_embed.weight[level])
            memory_pos.append(getattr(self, f"memory_pos_{level}"))
        batch = mask_features.shape[0]
        groups = self.query_groups if self.training else 1  # structural (train/eval), not data-dependent
        count = self.num_queries * groups
        queries = self.query_feat.weight[:count].unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_pos.weight[:count].unsqueeze(0).expand(batch, -1, -1)
        self_mask = self.group_mask if groups > 1 else None
        predictions = [self.predict(queries, mask_features)]
        for index, layer in enumerate(self.layers):
            level = index % len(MEMORY_STRIDES)
            bias = attention_bias(predictions[-1][1], self.memory_sizes[level], self.config.num_heads)
            queries = layer(queries, query_pos, memory[level], memory_pos[level], bias, self_mask)
            predictions.append(self.predict(queries, mask_features))
        aux = [{"pred_logits": logits, "pred_masks": masks} for logits, masks in predictions[:-1]]
        out = {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1], "aux_outputs": aux}
        if groups > 1:
            out["query_groups"] = groups
        return out
