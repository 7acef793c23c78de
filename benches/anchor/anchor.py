"""The PyTorch side of `cargo xtask bench --anchor`: the same benchmark case as kiln's
`kiln_step` binary, in PyTorch + transformers (+ peft for LoRA), so that both are measured on
the same machine in one run.

A MiniLM-shaped BERT (or --model DIR), mean-pooled features, dropout 0.1 and a linear head for
5 classes, as kiln's classifier; a batch of 16 x 128 random token ids. `--mode train` times one
training step (dropout on, cross-entropy, backward, clipping at 1.0, AdamW), `--mode infer` one
inference batch under `torch.inference_mode()`. Prints one JSON object in kiln_step's schema.

    python anchor.py --method full|lora --mode train|infer [--model DIR] [--shape minilm|base]
                     [--batch 16] [--len 128] [--steps 5] [--device cpu|cuda]

`--shape base` is BERT-base's shape (768 x 12 layers x 3072) at random initialisation; with
`--device cuda` the step runs on the GPU, timed after `torch.cuda.synchronize()`, and the JSON's
`peak_gpu_mib` is `torch.cuda.max_memory_allocated()`.
"""

import argparse
import json
import resource
import statistics
import time

import torch
from torch import nn
from transformers import BertConfig, BertModel


# Hidden size, layers, heads, feed-forward width: kiln_step's `--shape` presets.
SHAPES = {"minilm": (384, 6, 12, 1536), "base": (768, 12, 12, 3072)}


def shaped(name):
    hidden, layers, heads, inner = SHAPES[name]
    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inner,
        max_position_embeddings=512,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


class Classifier(nn.Module):
    """BERT, mean over attended tokens, dropout, linear head: kiln's `SequenceClassifier`."""

    def __init__(self, bert, classes):
        super().__init__()
        self.bert = bert
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(bert.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def build(args):
    if args.model:
        bert = BertModel.from_pretrained(args.model, add_pooling_layer=False)
    else:
        torch.manual_seed(0)
        bert = BertModel(shaped(args.shape), add_pooling_layer=False)
    model = Classifier(bert, classes=5)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.1,
            target_modules=["query", "value"],
            modules_to_save=["head"],
        )
        model = get_peft_model(model, config)
        if args.merged:
            model = model.merge_and_unload()
    elif args.method != "full":
        raise SystemExit(f"--method {args.method}: the anchor has full and lora")
    return model, bert.config.vocab_size


def matmul_peak():
    """The best fp32 GFLOP/s of PyTorch's matrix product (MKL on x86 CPUs) at 2048^3 over
    five tries: the box's practical peak in this run, for the anchor's share-of-peak column."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - started) / 1e9)
    print(json.dumps({"engine": "pytorch", "threads": torch.get_num_threads(), "matmul_gflops": best}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="full")
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--merged", action="store_true")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--matmul-peak", action="store_true", help="measure the CPU's fp32 product rate only")
    args = parser.parse_args()
    if args.matmul_peak:
        return matmul_peak()

    device = torch.device(args.device)
    model, vocab = build(args)
    model = model.to(device)
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, vocab, (args.batch, args.len), generator=generator).to(device)
    mask = torch.ones_like(ids)
    labels = (torch.arange(args.batch) % 5).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())

    timings = []
    if args.mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, eps=1e-8)
        for i in range(args.warmup + args.steps):
            started = time.perf_counter()
            loss = nn.functional.cross_entropy(model(ids, mask), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            sync()
            if i >= args.warmup:
                timings.append((time.perf_counter() - started) * 1e3)
    else:
        model.eval()
        with torch.inference_mode():
            for i in range(args.warmup + args.steps):
                started = time.perf_counter()
                model(ids, mask).tolist()
                sync()
                if i >= args.warmup:
                    timings.append((time.perf_counter() - started) * 1e3)

    median = statistics.median_low(timings)
    print(
        json.dumps(
            {
                "engine": "pytorch",
                "method": args.method,
                "mode": args.mode,
                "merged": args.merged,
                "batch": args.batch,
                "len": args.len,
                "device": args.device,
                "shape": args.shape,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "trainable_params": sum(p.numel() for p in trainable),
                "total_params": total,
                "ms": timings,
                "median_ms": median,
                "tokens_per_second": args.batch * args.len / (median / 1e3),
                # ru_maxrss is in KiB on Linux.
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20
                if device.type == "cuda"
                else None,
            }
        )
    )


if __name__ == "__main__":
    main()
