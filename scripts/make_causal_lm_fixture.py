#!/usr/bin/env python3
"""Writes the causal-language-model fixtures: peft adapters for `GPT2LMHeadModel` on the
committed tiny GPT-2 (task CAUSAL_LM; LoRA on c_attn with non-zero B, prompt tuning with 4
virtual tokens, prefix tuning with 4), saved under fixtures/peft/peft-gpt2-clm-*, and
fixtures/reference/gpt2_causal_lm.json: the next-token loss transformers and peft compute on two
blocks of token ids (`labels=input_ids`, the mean over every predicted position; peft masks the
virtual tokens out) without and with each adapter, and each one's greedy `generate` after a
prompt. kiln's language-model loss and `kiln generate --run` must give the same. Tests never run
this script:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VENV/bin/python scripts/make_causal_lm_fixture.py

(any environment with torch, transformers and peft; transformers 4.57.6 and peft 0.17.1 when
written.)
"""
import json
import shutil
from pathlib import Path

import torch
from peft import (LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType,
                  get_peft_model)
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
BLOCKS = [[(7 * i + 3) % 270 for i in range(12)], [(11 * i + 5) % 270 for i in range(12)]]
PROMPT = [11, 42, 7]
NEW_TOKENS = 8
# An id beyond the vocabulary: generation never stops early.
NO_STOP = 10_000


def base():
    return GPT2LMHeadModel.from_pretrained(ROOT / "gpt2-tiny").eval()


def loss(model) -> float:
    ids = torch.tensor(BLOCKS)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def greedy(model) -> list:
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=NO_STOP,
            pad_token_id=0,
        )
    return out[0, len(PROMPT):].tolist()


def adapters():
    yield "lora", LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
    )
    yield "prompt", PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    yield "prefix", PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)


def main() -> None:
    torch.manual_seed(0)
    reference = {
        "blocks": BLOCKS,
        "generation_prompt": PROMPT,
        "new_tokens": NEW_TOKENS,
        "base": {"loss": loss(base()), "generated": greedy(base())},
    }
    for name, config in adapters():
        model = get_peft_model(base(), config)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                # B starts at zero; a non-zero one makes the adapter change the outputs.
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.5)
                # peft's default prompt and prefix draws are N(0, 1): scaled to the
                # embeddings' size, so that the tiny model's outputs stay informative.
                if "prompt_encoder" in param_name:
                    param.mul_(0.1)
        model.eval()
        out = ROOT / "peft" / f"peft-gpt2-clm-{name}"
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)
        # The base model by its path in the repository, not on the machine that wrote it.
        config_path = out / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = "fixtures/gpt2-tiny"
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        reference[name] = {"loss": loss(model), "generated": greedy(model)}
    path = ROOT / "reference" / "gpt2_causal_lm.json"
    path.write_text(json.dumps(reference, indent=1) + "\n")
    print(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
