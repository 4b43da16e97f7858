"""Tiny random Grounding DINO + SAM2 weights directories for tests (no download, about a second).

The tokenizer is a BERT WordPiece vocabulary built here: letters and ``##`` letters, so any
lower-case class name tokenizes, with ``[CLS]``/``[SEP]``/``.``/``?`` at BERT's ids (101, 102,
1012, 1029). Grounding DINO's text masks and its loss find phrase boundaries by those ids.
"""

from __future__ import annotations

from pathlib import Path

import torch

BERT_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
VOCAB_SIZE = 1100


def tiny_tokenizer():
    from transformers import BertTokenizer

    tokens = {i: f"[unused{i}]" for i in range(VOCAB_SIZE)}
    tokens.update(BERT_IDS)
    letters = "abcdefghijklmnopqrstuvwxyz"
    free = [i for i in range(200, VOCAB_SIZE) if i not in BERT_IDS]
    for i, word in zip(free, list(letters) + ["##" + c for c in letters] + ["-", "_", "/"]):
        tokens[i] = word
    return BertTokenizer(vocab={word: i for i, word in tokens.items()})


def tiny_models(seed: int = 0, *, sam_size: int = 128, queries: int = 20):
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, Sam2Config,
                              Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2Model, Sam2PromptEncoderConfig,
                              Sam2VisionConfig, SwinConfig)

    torch.manual_seed(seed)
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=224,
                      out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=256)
    grounding = GroundingDinoForObjectDetection(GroundingDinoConfig(
        backbone_config=swin, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        num_queries=queries, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=128,
        auxiliary_loss=True))
    s = sam_size
    hiera = Sam2HieraDetConfig(hidden_size=16, num_attention_heads=1, blocks_per_stage=[1, 1, 2, 1],
                               embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                               window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
                               window_positional_embedding_background_size=[4, 4], image_size=s)
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32,
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]])
    sam2 = Sam2Model(Sam2Config(
        vision_config=vision, prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, num_attention_heads=2, mlp_dim=64,
                                                  iou_head_hidden_dim=32)))
    # SAM2 initialises its mask head so every logit starts at exactly 0 (probability 0.5, no mask
    # above the 0.5 threshold); random weights here make a random teacher draw real masks.
    with torch.no_grad():
        for p in sam2.mask_decoder.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return grounding, sam2, tiny_tokenizer()


def write_tiny_weights(root: Path, seed: int = 0, **kwargs) -> Path:
    """``root/grounding_dino/`` and ``root/sam2/`` as save_pretrained writes them; returns ``root``."""
    grounding, sam2, tokenizer = tiny_models(seed, **kwargs)
    root = Path(root)
    grounding.save_pretrained(root / "grounding_dino")
    tokenizer.save_pretrained(root / "grounding_dino")
    sam2.save_pretrained(root / "sam2")
    return root
