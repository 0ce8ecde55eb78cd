"""Document-model checkpoints shaped like the hub's (random weights, the real configs' structure):
Donut (4-stage Donut-Swin + mBART, Donut's processor, long outputs) and manga-ocr (ViT + 2-layer BERT,
beams 4). Sizes are parameters: the tests use small ones, bench/export_time.py the issue's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig, DonutSwinConfig, MBartConfig, PreTrainedTokenizerFast, ViTConfig, VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _save(model: VisionEncoderDecoderModel, out: Path, tokenizer, processor: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor))
    return out


def donut_like(out: Path, size: tuple[int, int] = (160, 160), embed_dim: int = 32, depths=(2, 2, 6, 2),
               window: int = 5, d_model: int = 256, decoder_layers: int = 4, vocab: int = 512, max_length: int = 768,
               init_std: float = 0.2, seed: int = 0, encoder_std: float | None = None) -> Path:
    """donut-base's structure: Donut-Swin (4 stages, heads doubling) + mBART (pre-norm, scaled
    embeddings, final LayerNorm), Donut's processor (align long axis, thumbnail, pad), bad_words [[unk]]."""
    heads = [max(1, embed_dim // 32) * 2 ** i for i in range(len(depths))]
    enc = DonutSwinConfig(image_size=list(size), patch_size=4, embed_dim=embed_dim, depths=list(depths),
                          num_heads=heads, window_size=window,
                          initializer_range=init_std if encoder_std is None else encoder_std)
    dec = MBartConfig(vocab_size=vocab, d_model=d_model, decoder_layers=decoder_layers, encoder_layers=decoder_layers,
                      decoder_attention_heads=max(1, d_model // 64), decoder_ffn_dim=4 * d_model,
                      max_position_embeddings=2 * max_length, is_decoder=True, add_cross_attention=True,
                      tie_word_embeddings=False, init_std=init_std, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                      decoder_start_token_id=0, scale_embedding=True, add_final_layer_norm=True)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg).eval()
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id = 0, 1, 2
    model.generation_config.max_length = max_length
    model.generation_config.bad_words_ids = [[3]]
    processor = {"image_processor_type": "DonutImageProcessor", "size": {"height": size[0], "width": size[1]},
                 "do_align_long_axis": True, "do_thumbnail": True, "do_pad": True}
    return _save(model, out, word_tokenizer(vocab), processor)


def japanese_vocab() -> list[str]:
    """A character vocabulary like manga-ocr's (cl-tohoku's char BERT): specials, kana, kanji, ASCII,
    full-width punctuation, and `##` continuation entries."""
    chars = [chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x30A1, 0x30FB)]
    chars += list("日本語漢字読書人大小中上下山川田口目耳手足") + list("0123456789ABCxyz!?.,") + list("。、「」…・！？ー")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars[:40]]


def write_slow_japanese_tokenizer(out: Path, vocab: list[str]) -> None:
    """manga-ocr's tokenizer files: vocab.txt and a BertJapaneseTokenizer config, no tokenizer.json
    (the basic word splitter here, where manga-ocr's uses MeCab: decoding does not depend on it)."""
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertJapaneseTokenizer", "do_lower_case": False, "word_tokenizer_type": "basic",
        "subword_tokenizer_type": "character", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]", "model_max_length": 512}))


def manga_like(out: Path, image: int = 224, hidden: int = 768, encoder_layers: int = 12, decoder_hidden: int = 768,
               vocab: int = 6144, max_length: int = 300, init_std: float = 0.02, seed: int = 0,
               slow_vocab: list[str] | None = None, encoder_std: float | None = None) -> Path:
    """kha-white/manga-ocr-base's structure: ViT encoder + 2-layer BERT decoder (CLS starts, SEP ends),
    beams 4, no_repeat_ngram 3, length_penalty 2. `slow_vocab`: ship it as manga-ocr does (vocab.txt
    and a slow BertJapaneseTokenizer only)."""
    if slow_vocab is not None:
        vocab = len(slow_vocab)
    enc = ViTConfig(image_size=image, patch_size=16, hidden_size=hidden, num_hidden_layers=encoder_layers,
                    num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                    initializer_range=init_std if encoder_std is None else encoder_std)
    dec = BertConfig(vocab_size=vocab, hidden_size=decoder_hidden, num_hidden_layers=2,
                     num_attention_heads=max(1, decoder_hidden // 64), intermediate_size=4 * decoder_hidden,
                     max_position_embeddings=512, is_decoder=True, add_cross_attention=True, initializer_range=init_std,
                     pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg).eval()
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id = 2, 0, 3
    g = model.generation_config
    g.max_length, g.num_beams, g.no_repeat_ngram_size, g.length_penalty, g.early_stopping = max_length, 4, 3, 2.0, True
    processor = {"image_processor_type": "ViTImageProcessor", "size": {"height": image, "width": image}}
    if slow_vocab is None:
        return _save(model, out, word_tokenizer(vocab), processor)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor))
    write_slow_japanese_tokenizer(out, slow_vocab)
    return out
