"""Train the bundled demo captioner (a tiny ViT -> GPT-2 VisionEncoderDecoderModel) on CPU.

Everything is built from configs (no model hub): a word-level ``tokenizers`` tokenizer over the
closed vocabulary of the scene grammar (see ``scenes.py``), a ViT encoder and a GPT-2 decoder
with cross-attention.

Recipe (the defaults of the CLI; see models/demo/EVAL.md for the measured results):

* data: ``--scenes`` (default 60000) scenes from ``scenes.generate_scenes(seed=--seed)`` with the
  default training seed 1, rendered at the model size (96 px). Evaluation uses seed 1234 and the
  shipped samples seed 9000; each seed is its own ``random.Random`` stream, so the sets are
  independent draws of the scene world. Pixels go through the saved ``ViTImageProcessor``
  (bilinear resize to 96, rescale 1/255, normalize mean = std = 0.5) batch by batch.
* labels: caption token ids + ``<eos>``, padded with -100; ``decoder_input_ids`` are the labels
  shifted right behind ``decoder_start_token_id`` (= ``<bos>``), padded with ``<pad>``.
* model: ViT encoder (96 px, patch 12 -> 8x8 patches, hidden 160, 4 layers, 4 heads, MLP 640)
  + GPT-2 decoder (n_embd 160, 3 layers, 4 heads, n_positions 32, cross-attention), no
  dropout, 2.59 M parameters. The ViT position embeddings start from a 2-D sin-cos table
  (still trained) so that the encoder has spatial structure from the first step. Expect a
  plateau: in the reference run left/right stayed at chance (relation accuracy ~0.73, with
  above/below solved) until about step 2000, then was learned within ~200 steps.
* optimisation: AdamW (betas 0.9/0.98, weight decay 0.05 on matrices only), peak lr 1.5e-3,
  linear warm-up over 5 % of the steps then cosine decay to 2 % of the peak, batch 64,
  gradient clipping at 1.0, ``--steps`` (default 3000) steps; batches are drawn by a
  ``torch.Generator`` seeded with ``--seed``; ``torch.manual_seed(--seed)`` fixes the init.
  ``--save-every N`` additionally saves the checkpoint every N steps (does not change the
  result).
* threads: ``torch.set_num_threads(--threads)`` (default 2).

CLI::

    python models/demo/train.py --out DIR [--steps N] [--scenes N] [--threads N] [--seed S]
        [--batch-size B] [--lr LR] [--save-every N]

writes a ``save_pretrained`` checkpoint (config.json, generation_config.json,
model.safetensors), ``tokenizer.json`` + tokenizer_config.json / special_tokens_map.json (via
``PreTrainedTokenizerFast``) and ``preprocessor_config.json`` to DIR.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
log = logging.getLogger("demo.train")

IMAGE_SIZE = 96
PATCH_SIZE = 12
HIDDEN = 160
ENCODER_LAYERS = 4
DECODER_LAYERS = 3
HEADS = 4
N_POSITIONS = 32
MAX_NEW_TOKENS = 24  # longest caption is 17 words + <eos>
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = SPECIAL_TOKENS


def load_scenes():
    """Import the sibling scenes.py (models/demo is not a package)."""
    if "demo_scenes" in sys.modules:
        return sys.modules["demo_scenes"]
    spec = importlib.util.spec_from_file_location("demo_scenes", HERE / "scenes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["demo_scenes"] = mod
    spec.loader.exec_module(mod)
    return mod


def vocabulary() -> list[str]:
    """The closed word list of the caption grammar, special tokens first (pad = id 0)."""
    sc = load_scenes()
    words = ["a", "and", *sc.SIZES, *sc.PALETTE, *sc.SHAPES]
    for phrase in sc.RELATIONS.values():
        for w in phrase.split():
            if w not in words:
                words.append(w)
    return [*SPECIAL_TOKENS, *words]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece decoder without cleanup: joins tokens with single spaces, nothing else.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_processor():
    from PIL import Image
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=Image.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_model(tok):
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    bos, eos, pad = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(PAD)
    enc = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=ENCODER_LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    dec = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=N_POSITIONS,
        n_embd=HIDDEN,
        n_layer=DECODER_LAYERS,
        n_head=HEADS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    for cfg in (config,):
        cfg.decoder_start_token_id = bos
        cfg.bos_token_id = bos
        cfg.eos_token_id = eos
        cfg.pad_token_id = pad
        cfg.vocab_size = dec.vocab_size
    model = VisionEncoderDecoderModel(config=config)
    init_sincos_positions(model)
    gc = model.generation_config
    gc.decoder_start_token_id = bos
    gc.bos_token_id = bos
    gc.eos_token_id = eos
    gc.pad_token_id = pad
    gc.max_new_tokens = MAX_NEW_TOKENS
    gc.max_length = MAX_NEW_TOKENS + 1
    gc.num_beams = 1
    gc.do_sample = False
    return model


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table (grid*grid, dim), as in MAE: half of the channels
    encode the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for c in (ys.reshape(-1), xs.reshape(-1)):
        angles = c[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


def init_sincos_positions(model) -> None:
    """Start the ViT's (trainable) position embeddings from a 2-D sin-cos table (CLS at 0):
    spatial relations are learned far sooner than from random position embeddings."""
    emb = model.encoder.embeddings.position_embeddings  # (1, 1 + grid*grid, hidden)
    grid = IMAGE_SIZE // PATCH_SIZE
    with torch.no_grad():
        emb.zero_()
        emb[0, 1:] = sincos_2d(grid, emb.shape[-1])


def encode_captions(tok, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, decoder_input_ids), both (n, L): ids + <eos>, labels padded with -100."""
    bos, eos, pad = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(PAD)
    seqs = [e.ids + [eos] for e in tok.encode_batch(captions)]
    width = max(len(s) for s in seqs)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    dec_in = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        labels[i, : len(s)] = torch.tensor(s)
        dec_in[i, 0] = bos
        dec_in[i, 1 : len(s)] = torch.tensor(s[:-1])
    return labels, dec_in


def make_dataset(seed: int, count: int) -> tuple[np.ndarray, list[str]]:
    sc = load_scenes()
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    t0 = time.time()
    for i, scene in enumerate(sc.generate_scenes(seed, count)):
        images[i] = np.asarray(sc.render(scene, IMAGE_SIZE))
        captions.append(sc.caption(scene))
        if (i + 1) % 10000 == 0:
            log.info("rendered %d/%d scenes (%.0f s)", i + 1, count, time.time() - t0)
    return images, captions


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    out: Path,
    steps: int = 3000,
    scenes: int = 60000,
    threads: int = 2,
    seed: int = 1,
    batch_size: int = 64,
    lr: float = 1.5e-3,
    save_every: int = 0,
) -> Path:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t_start = time.time()
    tok = build_tokenizer()
    processor = build_processor()
    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters; vocab %d; image %d px / patch %d", n_params, tok.get_vocab_size(), IMAGE_SIZE, PATCH_SIZE)

    images, captions = make_dataset(seed, scenes)
    labels_all, dec_in_all = encode_captions(tok, captions)
    log.info("dataset: %d scenes rendered in %.0f s", scenes, time.time() - t_start)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, int(0.05 * steps))
    gen = torch.Generator().manual_seed(seed)
    sc = load_scenes()
    groups = {
        name: torch.tensor([tok.token_to_id(w) for w in words])
        for name, words in (
            ("size", list(sc.SIZES)),
            ("colour", list(sc.PALETTE)),
            ("shape", list(sc.SHAPES)),
            ("relation", ["left", "right", "above", "below"]),
            ("and/eos", ["and", EOS]),
        )
    }
    hits: dict[str, float] = {}
    model.train()
    t_loop = time.time()
    running = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        idx = torch.randint(0, scenes, (batch_size,), generator=gen)
        pixel_values = processor(images=list(images[idx.numpy()]), return_tensors="pt")["pixel_values"]
        labels, dec_in = labels_all[idx], dec_in_all[idx]
        width = int((labels != -100).sum(1).max())
        labels, dec_in = labels[:, :width], dec_in[:, :width]
        outputs = model(pixel_values=pixel_values, decoder_input_ids=dec_in, labels=labels)
        loss = outputs.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        with torch.no_grad():
            pred = outputs.logits.argmax(-1)
            for name, ids in groups.items():
                sel = torch.isin(labels, ids)
                hits[name] = 0.95 * hits.get(name, 0.0) + 0.05 * (pred[sel] == labels[sel]).float().mean().item()
            seq_ok = ((pred == labels) | (labels == -100)).all(1).float().mean().item()
            hits["seq"] = 0.95 * hits.get("seq", 0.0) + 0.05 * seq_ok
        if (step + 1) % 50 == 0 or step + 1 == steps:
            elapsed = time.time() - t_loop
            rate = (step + 1) / elapsed
            log.info(
                "step %d/%d loss %.4f lr %.2e %.2f steps/s eta %.0f s",
                step + 1, steps, running, opt.param_groups[0]["lr"], rate, (steps - step - 1) / rate,
            )
            log.info("  train accuracy (ema): %s", " ".join(f"{k} {v:.3f}" for k, v in hits.items()))
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save(model, processor, tok, out)
            model.train()

    save(model, processor, tok, out)
    log.info("saved %s; %d parameters; total wall time %.0f s", out, n_params, time.time() - t_start)
    return out


def save(model, processor, tok, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=N_POSITIONS,
    ).save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the bundled demo captioner on CPU.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--scenes", type=int, default=60000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--save-every", type=int, default=0, help="also save to --out every N steps")
    args = p.parse_args(argv)
    if args.seed in (1234, 9000):
        p.error("seeds 1234 (evaluation) and 9000 (samples) are reserved")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    train(args.out, args.steps, args.scenes, args.threads, args.seed, args.batch_size, args.lr, args.save_every)


if __name__ == "__main__":
    main()
