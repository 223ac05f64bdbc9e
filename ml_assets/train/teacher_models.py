"""The teachers' base models written from scratch: Grounding DINO and SAM, randomly initialized.

:func:`init_grounding_dino` and :func:`init_sam` write randomly initialized base models (tiny
ones train a step in a second or two on a CPU) for ``ml-assets base-model init``. Nothing is
downloaded: Grounding DINO's text tokenizer is a BERT WordPiece tokenizer over a small
vocabulary built here (lower-case letters, digits and punctuation as word pieces), which spells
any class name. The LoRA teacher kinds (``ml_assets.train.lora_teachers``) train adapters on them.
"""

from __future__ import annotations

import string
from pathlib import Path

from ml_assets.data.atomic import atomic_dir

TINY_SIDE = 64  # input side of the tiny teachers
# Grounding DINO's code hard-codes the ids BERT's vocabulary gives [CLS] (101), [SEP] (102), "."
# (1012) and "?" (1029), with [PAD] (0), as the separators between phrases: the small vocabulary
# keeps every special token at BERT's id.
BERT_IDS = {
    "[PAD]": 0,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "[MASK]": 103,
    ".": 1012,
    "?": 1029,
}


def small_vocabulary() -> dict[str, int]:
    """A WordPiece vocabulary that spells any lower-case ASCII name, BERT's special tokens at
    BERT's ids (see ``BERT_IDS``), unused slots named ``[unusedN]``."""
    tokens = [f"[unused{i}]" for i in range(max(BERT_IDS.values()) + 1)]
    for token, i in BERT_IDS.items():
        tokens[i] = token
    chars = string.ascii_lowercase + string.digits
    pieces = [*chars, *(f"##{c}" for c in chars), *(c for c in string.punctuation if c not in ".?")]
    start = BERT_IDS["[MASK]"] + 1
    tokens[start : start + len(pieces)] = pieces
    return {token: i for i, token in enumerate(tokens)}


def _write_new(folder: Path):
    """atomic_dir for a folder that must not exist, or that exists empty (``base-model init``
    hands over the empty temporary folder it publishes)."""
    folder = Path(folder)
    empty = folder.is_dir() and not any(folder.iterdir())
    return atomic_dir(folder, overwrite=empty)


def init_grounding_dino(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write a randomly initialized Grounding DINO with its processor (image processor and the
    small-vocabulary BERT tokenizer) to ``folder``, atomically. ``tiny``: a 64-pixel Swin, a
    one-layer BERT and a two-layer decoder (one layer cannot tie its box heads)."""
    import torch
    import transformers as t

    vocabulary = small_vocabulary()
    if tiny:
        config = t.GroundingDinoConfig(
            backbone_config=t.SwinConfig(
                image_size=TINY_SIDE,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 1],
                window_size=4,
                out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=t.BertConfig(
                vocab_size=len(vocabulary),
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=20,
            num_feature_levels=3,
            max_text_len=64,
            encoder_n_points=2,
            decoder_n_points=2,
        )
        side = {"shortest_edge": TINY_SIDE, "longest_edge": TINY_SIDE}
    else:  # Grounding DINO-T: Swin-T and BERT-base (with the small vocabulary)
        config = t.GroundingDinoConfig(text_config=t.BertConfig(vocab_size=len(vocabulary)))
        side = {"shortest_edge": 800, "longest_edge": 1333}
    torch.manual_seed(seed)
    model = t.GroundingDinoForObjectDetection(config)
    processor = t.GroundingDinoProcessor(
        image_processor=t.GroundingDinoImageProcessor(size=side),
        tokenizer=t.BertTokenizer(vocab=vocabulary, do_lower_case=True),
    )
    with _write_new(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(folder)


def init_sam(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write a randomly initialized SAM with its processor to ``folder``, atomically. ``tiny``:
    a two-layer 64-pixel image encoder; the prompt encoder's and mask decoder's widths equal the
    vision neck's output channels, as SAM requires."""
    import torch
    import transformers as t

    if tiny:
        width = 32
        config = t.SamConfig(
            vision_config=t.SamVisionConfig(
                hidden_size=32,
                output_channels=width,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_dim=64,
                image_size=TINY_SIDE,
                patch_size=8,
                window_size=4,
                global_attn_indexes=[1],
                num_pos_feats=width // 2,
            ),
            prompt_encoder_config=t.SamPromptEncoderConfig(
                hidden_size=width, image_size=TINY_SIDE, patch_size=8, mask_input_channels=4
            ),
            mask_decoder_config=t.SamMaskDecoderConfig(
                hidden_size=width,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_dim=64,
                iou_head_hidden_dim=width,
            ),
        )
    else:  # SAM ViT-B at 1024 pixels
        config = t.SamConfig()
    side = config.vision_config.image_size
    low = 4 * side // config.vision_config.patch_size
    torch.manual_seed(seed)
    model = t.SamModel(config)
    processor = t.SamProcessor(
        image_processor=t.SamImageProcessor(
            size={"longest_edge": side},
            pad_size={"height": side, "width": side},
            mask_size={"longest_edge": low},
            mask_pad_size={"height": low, "width": low},
        )
    )
    with _write_new(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(folder)
