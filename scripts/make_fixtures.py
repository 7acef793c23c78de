#!/usr/bin/env python3
"""Writes the HF `transformers` fixtures that kiln's Rust tests compare against.

Tests never run this script; they read what it committed under fixtures/. Re-run it only when a
fixture must change, and commit the result:

    python3 -m venv /tmp/kiln-venv
    /tmp/kiln-venv/bin/pip install torch transformers safetensors
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /tmp/kiln-venv/bin/python scripts/make_fixtures.py \
        [--minilm DIR]

It writes, with a fixed seed:
  fixtures/bert-tiny/        tiny random BERT: config.json, model.safetensors, vocab.txt,
                             tokenizer_config.json, tokenizer.json
  fixtures/bert-tiny-bin/    the same weights as pytorch_model.bin (no tokenizer.json)
  fixtures/gpt2-tiny/        tiny random GPT2LMHeadModel: config.json, model.safetensors,
                             vocab.json, merges.txt (a small hand-made byte-level BPE)
  fixtures/gpt2-tiny-bin/    the same weights as pytorch_model.bin
  fixtures/reference/*.json  inputs and transformers outputs for a fixed padded batch, and
                             tokenizer ids for a few texts
With --minilm DIR (the unpacked all-MiniLM-L6-v2 model directory, see `cargo xtask assets`) it
also writes fixtures/reference/minilm_embeddings.json: mean-pooled sentence embeddings.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
REF = ROOT / "reference"

WORDS = (
    "the a an of to and in is it that was for on are with as he she they be at one have this "
    "from by hot word but what some we can out other were all there when up use your how said "
    "each which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find kiln fire clay"
).split()
SUFFIXES = ["##s", "##ing", "##ed", "##er", "##ly", "##n", "##e", "##t"]
TEXTS = [
    "The kiln fires clay.",
    "Some people write, then they look at the water!",
    "Hello unknownword Übung",
    "a",
]
PAIRS = [("The kiln fires clay.", "It was hot."), ("Many words", "few")]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Gives every parameter non-trivial values so that each one is checked by the parity test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            if "LayerNorm.weight" in name or ".ln_" in name and name.endswith("weight"):
                param.copy_(1.0 + noise)
            else:
                param.copy_(noise * 2.0)


def tensor_json(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": [float(v) for v in t.reshape(-1).tolist()]}


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=None, separators=(",", ":")) + "\n")


def copy_without(src: Path, dst: Path, drop: list) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))


def bert_fixtures() -> None:
    out = ROOT / "bert-tiny"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + SUFFIXES
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz.,!?"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    slow = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    slow.save_pretrained(str(out))
    fast = BertTokenizerFast(str(out / "vocab.txt"), do_lower_case=True)
    fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    for extra in ["special_tokens_map.json", "added_tokens.json"]:
        (out / extra).unlink(missing_ok=True)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=True).eval()
    perturb(model, 1)
    model.save_pretrained(str(out), safe_serialization=True)

    binary = ROOT / "bert-tiny-bin"
    copy_without(out, binary, ["model.safetensors", "tokenizer.json"])
    torch.save(model.state_dict(), binary / "pytorch_model.bin")

    enc = slow(TEXTS, padding=True, return_tensors="pt")
    pair_enc = slow([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        for name, batch in [("bert_single", enc), ("bert_pair", pair_enc)]:
            output = model(**batch)
            write_json(
                REF / f"{name}.json",
                {
                    "input_ids": batch["input_ids"].tolist(),
                    "attention_mask": batch["attention_mask"].tolist(),
                    "token_type_ids": batch["token_type_ids"].tolist(),
                    "last_hidden_state": tensor_json(output.last_hidden_state),
                    "pooler_output": tensor_json(output.pooler_output),
                },
            )
    write_json(
        REF / "bert_tokens.json",
        {
            "texts": TEXTS,
            "ids": [slow(t)["input_ids"] for t in TEXTS],
            "pairs": PAIRS,
            "pair_ids": [slow(a, b)["input_ids"] for a, b in PAIRS],
            "pair_type_ids": [slow(a, b)["token_type_ids"] for a, b in PAIRS],
        },
    )


def byte_level_alphabet() -> list:
    """GPT-2's printable stand-ins for the 256 byte values, in id order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def gpt2_fixtures() -> None:
    out = ROOT / "gpt2-tiny"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    alphabet = byte_level_alphabet()
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "k"), ("i", "l"), ("Ġk", "il"), ("Ġkil", "n"),
              ("Ġ", "c"), ("l", "a"), ("Ġc", "la"), ("Ġcla", "y"), ("i", "n"), ("Ġ", "f"), ("Ġf", "i"),
              ("r", "e"), ("Ġfi", "re"), ("Ġfire", "s")]
    vocab = {c: i for i, c in enumerate(alphabet)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = GPT2Tokenizer(str(out / "vocab.json"), str(out / "merges.txt"))

    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        bos_token_id=len(vocab) - 1,
        eos_token_id=len(vocab) - 1,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    perturb(model, 2)
    model.save_pretrained(str(out), safe_serialization=True)
    binary = ROOT / "gpt2-tiny-bin"
    copy_without(out, binary, ["model.safetensors"])
    torch.save(model.state_dict(), binary / "pytorch_model.bin")

    texts = ["The kiln fires clay.", "the fire", "Hello, world! Ünï"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    seq = max(len(i) for i in ids)
    pad = config.eos_token_id
    input_ids = torch.tensor([i + [pad] * (seq - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (seq - len(i)) for i in ids])
    with torch.no_grad():
        hidden = model.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    write_json(
        REF / "gpt2_right_padded.json",
        {
            "input_ids": input_ids.tolist(),
            "attention_mask": mask.tolist(),
            "last_hidden_state": tensor_json(hidden),
            "logits": tensor_json(logits),
        },
    )
    write_json(REF / "gpt2_tokens.json", {"texts": texts, "ids": ids, "decoded": [tokenizer.decode(i) for i in ids]})


def minilm_fixture(model_dir: Path) -> None:
    tokenizer = BertTokenizerFast.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir)).eval()
    sentences = [
        "The kiln fires the clay at twelve hundred degrees.",
        "Stock markets fell sharply on Monday.",
        "A short one.",
        "Parameter-efficient fine-tuning trains only a small share of the weights.",
    ]
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    write_json(
        REF / "minilm_embeddings.json",
        {"sentences": sentences, "input_ids": batch["input_ids"].tolist(), "embeddings": tensor_json(pooled)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path, help="unpacked all-MiniLM-L6-v2 model directory")
    args = parser.parse_args()
    bert_fixtures()
    gpt2_fixtures()
    if args.minilm:
        minilm_fixture(args.minilm)


if __name__ == "__main__":
    main()
