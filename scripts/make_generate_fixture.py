#!/usr/bin/env python3
"""Writes fixtures/reference/gpt2_generate.json: transformers' greedy `generate` (do_sample=False,
no cache flags: its default key/value cache) on the committed tiny GPT-2 (fixtures/gpt2-tiny),
for a few prompts given as token ids, 12 new tokens each, not stopping at the end-of-text token.
kiln's `generate_ids` must give the same tokens, with and without its cache. Tests never run
this script:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VENV/bin/python scripts/make_generate_fixture.py

(any environment with torch and transformers; transformers 4.57.6 when written.)
"""
import json
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
PROMPTS = [[11, 42, 7], [3, 5, 8, 13, 21, 34], [60]]
NEW_TOKENS = 12
# An id beyond the vocabulary: generation never stops early.
NO_STOP = 10_000


def main() -> None:
    model = GPT2LMHeadModel.from_pretrained(ROOT / "gpt2-tiny").eval()
    cases = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                # No end-of-text stop (and none of min_new_tokens' logit changes): plain argmax.
                eos_token_id=NO_STOP,
                pad_token_id=model.config.eos_token_id,
            )
        cases.append({"prompt": prompt, "generated": out[0, len(prompt):].tolist()})
    path = ROOT / "reference" / "gpt2_generate.json"
    path.write_text(json.dumps({"new_tokens": NEW_TOKENS, "cases": cases}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
