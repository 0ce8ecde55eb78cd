"""Tiny random VisionEncoderDecoder checkpoints built from configs (no downloads).

Following DESIGN.md section 4: untied embeddings and a wide init (std 0.2) so captions depend on
the image and logits are decisive (no near-ties to make parity flaky).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BartConfig,
    BertConfig,
    DeiTConfig,
    DonutSwinConfig,
    ElectraConfig,
    GPT2Config,
    MBartConfig,
    RobertaConfig,
    SwinConfig,
    PreTrainedTokenizerFast,
    TrOCRConfig,
    ViTConfig,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

VOCAB = 96
PAIRS = [("vit", "gpt2"), ("deit", "gpt2"), ("vit", "trocr"), ("deit", "trocr")]
# The families real checkpoints add (issue 11): manga-ocr (DeiT+BERT), ViT+RoBERTa, Swin+BART/GPT-2, Donut.
FAMILY_PAIRS = [("deit", "bert"), ("vit", "roberta"), ("swin", "bart"), ("swin", "gpt2"), ("donut-swin", "mbart"),
                ("vit", "electra")]
# Swin geometry: a 42x30 image is padded to 44x32 for 4-pixel patches (11x8 tokens), windows of 4
# pad that to 12x8, stage 2 (6x4 tokens) is one unshifted window wide: every padding path runs.
SWIN_IMAGE = (42, 30)


def encoder_config(kind: str, hidden: int = 48, **overrides):
    common = dict(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        image_size=32, patch_size=8, initializer_range=0.2, **overrides,
    )
    if kind in ("swin", "donut-swin"):
        cls = SwinConfig if kind == "swin" else DonutSwinConfig
        return cls(image_size=list(SWIN_IMAGE), patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                   window_size=4, initializer_range=0.2, mlp_ratio=2.0, **overrides)
    return ViTConfig(**common) if kind == "vit" else DeiTConfig(**common)


def decoder_config(kind: str, hidden: int = 64, **overrides):
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_embd=hidden, n_layer=2, n_head=4, n_positions=40, add_cross_attention=True,
            is_decoder=True, tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        )
    elif kind in ("bert", "roberta", "electra"):
        cls = {"bert": BertConfig, "roberta": RobertaConfig, "electra": ElectraConfig}[kind]
        extra = {"embedding_size": hidden // 2} if kind == "electra" else {}
        cfg = cls(
            vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=48, is_decoder=True, add_cross_attention=True, tie_word_embeddings=False,
            initializer_range=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2, **extra,
        )
    elif kind in ("bart", "mbart"):
        cls = BartConfig if kind == "bart" else MBartConfig
        cfg = cls(
            vocab_size=VOCAB, d_model=hidden, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=96,
            encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96, max_position_embeddings=40,
            is_decoder=True, tie_word_embeddings=False, init_std=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, scale_embedding=kind == "mbart", forced_eos_token_id=2 if kind == "bart" else None,
        )
    else:
        cfg = TrOCRConfig(
            vocab_size=VOCAB, d_model=hidden, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=96,
            max_position_embeddings=40, is_decoder=True, tie_word_embeddings=False, init_std=0.2,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            use_learned_position_embeddings=overrides.pop("use_learned_position_embeddings", True),
            layernorm_embedding=overrides.pop("layernorm_embedding", True),
            scale_embedding=overrides.pop("scale_embedding", False),
        )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build(
    out: Path,
    encoder: str = "vit",
    decoder: str = "gpt2",
    seed: int = 0,
    start: int | None = None,
    eos: int | list[int] = 2,
    pad: int = 1,
    max_new_tokens: int = 12,
    enc_hidden: int = 48,
    dec_hidden: int = 64,
    processor: dict | None = None,
    encoder_overrides: dict | None = None,
    **decoder_overrides,
) -> Path:
    """Write a tiny random checkpoint (model + tokenizer + preprocessor config) to `out`."""
    torch.manual_seed(seed)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        encoder_config(encoder, enc_hidden, **(encoder_overrides or {})),
        decoder_config(decoder, dec_hidden, **decoder_overrides),
    )
    cfg.tie_word_embeddings = False
    model = VisionEncoderDecoderModel(config=cfg).eval()
    start = (1 if decoder == "gpt2" else 2) if start is None else start
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id = start
        c.pad_token_id = pad
        c.eos_token_id = eos
    model.generation_config.bos_token_id = 1 if decoder == "gpt2" else 0
    model.generation_config.max_new_tokens = max_new_tokens
    model.generation_config.max_length = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer().save_pretrained(out)
    if processor is None:
        if encoder == "deit":
            processor = {
                "image_processor_type": "DeiTImageProcessor", "size": {"height": 40, "width": 40},
                "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "resample": 3,
            }
        elif encoder == "donut-swin":  # Donut's processor: align long axis, resize, thumbnail, pad
            h, w = SWIN_IMAGE
            processor = {"image_processor_type": "DonutImageProcessor", "size": {"height": h, "width": w},
                         "do_align_long_axis": True, "do_thumbnail": True, "do_pad": True, "resample": 2}
        elif encoder == "swin":
            h, w = SWIN_IMAGE
            processor = {"image_processor_type": "ViTImageProcessor", "size": {"height": h, "width": w}}
        else:
            processor = {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32}}
    (out / "preprocessor_config.json").write_text(json.dumps(processor))
    return out


NOUGAT_CORPUS = ["# 1 Introduction\n\nThe model reads pages of text, equations \\(x^{2}\\) and tables.",
                 "We show results in Table 1 and Figure 2. * [1] A. Author, Title, 2020."] * 20


def nougat_tokenizer():
    """A byte-level BPE laid out as Nougat's (<s> <pad> </s> <unk>, then merges), in the line's Nougat
    tokenizer class, whose saved tokenizer.json pads and truncates to 4096 as the real one does."""
    import transformers
    from tokenizers import trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(NOUGAT_CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if int(transformers.__version__.split(".")[0]) >= 5:
        from transformers import NougatTokenizer

        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        return NougatTokenizer(vocab=model["vocab"], merges=merges)  # enables padding/truncation itself
    from transformers import NougatTokenizerFast

    tok.enable_padding(length=4096, pad_id=1, pad_token="<pad>")
    tok.enable_truncation(4096)
    return NougatTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                               unk_token="<unk>")


def build_nougat(out: Path, seed: int = 0, max_positions: int = 700, max_length: int = 600,
                 eos: int = 2) -> Path:
    """A Nougat-shaped checkpoint: DonutSwin + mBART with an untied LM head, Nougat's generation
    config shape (start = bos 0, max_length), saved with NougatProcessor.save_pretrained (transformers
    5.x: processor_config.json; 4.x: preprocessor_config.json) and Nougat's tokenizer layout."""
    from transformers import NougatProcessor

    try:
        from transformers.models.nougat.image_processing_pil_nougat import NougatImageProcessorPil as image_cls
    except ImportError:
        from transformers import NougatImageProcessor as image_cls
    tok = nougat_tokenizer()
    torch.manual_seed(seed)
    h, w = SWIN_IMAGE
    decoder = MBartConfig(
        vocab_size=len(tok), d_model=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=96,
        encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96, max_position_embeddings=max_positions,
        is_decoder=True, add_cross_attention=True, tie_word_embeddings=False, init_std=0.2, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=0, scale_embedding=True)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config("donut-swin"), decoder)
    cfg.tie_word_embeddings = False
    model = VisionEncoderDecoderModel(config=cfg).eval()
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id = 0, 1, eos
    model.generation_config.bos_token_id = 0
    model.generation_config.max_length = max_length
    model.generation_config.max_new_tokens = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    NougatProcessor(image_processor=image_cls(size={"height": h, "width": w}), tokenizer=tok).save_pretrained(out)
    return out
