#!/usr/bin/env python3
"""Writes the HF peft fixtures of kiln's peft round-trip tests, in both directions, on the tiny
BERT and GPT-2 fixtures. Tests never run this script; they read what it committed.

    python3 -m venv VENV && VENV/bin/pip install torch transformers peft safetensors
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VENV/bin/python scripts/make_peft_fixtures.py

(`cargo xtask bench --anchor` leaves such an environment in `.kiln/anchor-venv`.)

peft to kiln, written here with a fixed seed:
  fixtures/peft/peft-bert-lora/   LoRA (r 4, alpha 8, query and value, random A and B) on
                                  BertForSequenceClassification (pooler + classifier, 2 labels),
                                  saved by `save_pretrained`, and expected.json: input ids,
                                  attention mask and the logits PeftModel gives.
  fixtures/peft/peft-gpt2-lora/   LoRA (r 4, alpha 8, c_attn, fan_in_fan_out) on GPT2Model, and
                                  expected.json with the last hidden state.
  fixtures/peft/peft-bert-prompt/ prompt tuning (3 random virtual tokens) on the same BERT
  fixtures/peft/peft-gpt2-prompt/ classifier and GPT2Model, with the same expected outputs.
  fixtures/peft/peft-gpt2-prefix/ prefix tuning (3 rows per layer, no projection) on GPT2Model.
  fixtures/peft/peft-p-tuning/    P-tuning's PromptEncoder on its own (4 virtual tokens, token_dim
                                  32, encoder_hidden_size 16), both reparameterisation types:
                                  {lstm,mlp}.safetensors hold its state dict as peft names it,
                                  expected.json the virtual tokens' embeddings it computes.
  fixtures/peft/peft-bert-rslora/ the LoRA family (`lora-family` writes these alone): rsLoRA and
  fixtures/peft/peft-*-dora/      DoRA (random A, B and magnitude) on both backbones' LoRA
  fixtures/peft/peft-*-ia3/       targets, IA3 (random vectors, peft's default targets), LoHa and
  fixtures/peft/peft-bert-lo{ha,kr}/ LoKr (random factors, BERT only), and LoRA on the token
  fixtures/peft/peft-bert-lora-embedding/ embedding beside the query, VeRA (random vectors, its
  fixtures/peft/peft-bert-vera/   shared matrices in the file), OFT (blocks of 8, random), each
  fixtures/peft/peft-bert-oft/    with expected.json; AdaLoRA (random, a rank pattern keeping 2 of
  fixtures/peft/peft-bert-adalora/ 4 triplets per module);
  fixtures/peft/peft-bert-{pissa,olora}-init/ the start PiSSA and OLoRA give on BERT's query and
                                  value (r 4, alpha 8): start.safetensors holds, per module, the
                                  residual base weight and lora_A / lora_B as peft made them.
  fixtures/peft/peft-arith/       two LoRA adapters and what add_weighted_adapter makes of them
                                  (linear, cat, svd, ties, magnitude_prune; `lora-arithmetic`).
kiln to peft, checked here: the directories kiln's test writes with KILN_WRITE_FIXTURES=1
  fixtures/peft/kiln-bert-lora/   are loaded with `PeftModel.from_pretrained(base, dir)`, and
  fixtures/peft/kiln-gpt2-lora/   transformers.json records the logits (BERT) or last hidden
  fixtures/peft/kiln-*-prompt/    state (GPT-2) they give on the same inputs;
  fixtures/peft/kiln-gpt2-prefix/
  fixtures/peft/kiln-bert-rslora/ (the LoRA family: rsLoRA, DoRA, IA3, and a PiSSA-trained
  fixtures/peft/kiln-*-dora/      delta converted to a rank-2r LoRA of the original base)
  fixtures/peft/kiln-*-ia3/
  fixtures/peft/kiln-bert-pissa/
  fixtures/peft/kiln-bert-lo{ha,kr}/
  fixtures/peft/kiln-bert-lora-embedding/
  fixtures/peft/kiln-bert-vera/
  fixtures/peft/kiln-bert-oft/
  fixtures/peft/kiln-bert-adalora/
  fixtures/peft/kiln-bert-merged/ are loaded by plain transformers (`kiln merge`'s checkpoints,
  fixtures/peft/kiln-gpt2-merged/ no peft), with transformers.json as above.
  fixtures/peft/kiln-*-merged/    (mean, last and pooler readouts) and kiln-bert-cls-lora/ hold
  fixtures/peft/kiln-bert-cls-lora/ a README.md whose Python function (`kiln_logits`,
                                  `kiln_predict`) is run here exactly as written, on the texts of
                                  kiln's test; readme_predictions.json records its logits and
                                  labels, which kiln's predictions must equal.
"""
import re

import json
from pathlib import Path

import torch
from peft import (
    AdaLoraConfig,
    OFTConfig,
    VeraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import AutoModel, AutoModelForSequenceClassification, BertForSequenceClassification, GPT2Model

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
OUT = ROOT / "peft"

# Fixed inputs inside both tiny vocabularies, the second row right-padded.
INPUT_IDS = [[2, 5, 100, 101, 159, 102, 137, 3], [2, 35, 85, 61, 3, 0, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]]


def inputs():
    return torch.tensor(INPUT_IDS), torch.tensor(ATTENTION_MASK)


def tensor_json(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": [float(v) for v in t.reshape(-1).tolist()]}


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, separators=(",", ":")) + "\n")


def bert_base():
    return BertForSequenceClassification.from_pretrained(ROOT / "bert-tiny", num_labels=2).eval()


def gpt2_base():
    return GPT2Model.from_pretrained(ROOT / "gpt2-tiny").eval()


def bert_logits(model) -> torch.Tensor:
    ids, mask = inputs()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def gpt2_hidden(model) -> torch.Tensor:
    ids, mask = inputs()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def expected(out: Path, name: str, value: torch.Tensor) -> None:
    write_json(
        out,
        {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, name: tensor_json(value)},
    )


def save(model, directory: Path, base: str) -> None:
    """`save_pretrained`, without the model card, naming the base by its fixture path."""
    model.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = f"fixtures/{base}"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# The base model, how it is run and the output recorded, per fixture backbone.
BASES = {
    "bert": (bert_base, bert_logits, "logits", "bert-tiny"),
    "gpt2": (gpt2_base, gpt2_hidden, "last_hidden_state", "gpt2-tiny"),
}


def peft_fixture(name: str, backbone: str, seed: int, config) -> None:
    """fixtures/peft/NAME: `config` applied to the backbone's base after seeding, saved, with
    expected.json holding the inputs and the output PeftModel gives."""
    base, run, key, fixture = BASES[backbone]
    torch.manual_seed(seed)
    model = get_peft_model(base(), config).eval()
    directory = OUT / name
    save(model, directory, fixture)
    expected(directory / "expected.json", key, run(model))


def peft_to_kiln() -> None:
    bert_lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["query", "value"],
        init_lora_weights=False,  # random B as well: a zero B would test nothing
    )
    peft_fixture("peft-bert-lora", "bert", 11, bert_lora)
    gpt2_lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
        init_lora_weights=False,
    )
    peft_fixture("peft-gpt2-lora", "gpt2", 12, gpt2_lora)
    # Prompt tuning: three random virtual tokens in front of the input.
    prompt = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)
    peft_fixture("peft-bert-prompt", "bert", 13, prompt)
    prompt = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=3)
    peft_fixture("peft-gpt2-prompt", "gpt2", 14, prompt)
    # Prefix tuning: three key and value rows per layer, passed as past_key_values.
    prefix = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=3)
    peft_fixture("peft-gpt2-prefix", "gpt2", 15, prefix)


def lora_family() -> None:
    """The LoRA variants and IA3, peft to kiln: random factors, so that every term counts."""
    for backbone, seed, extra in [("bert", 21, {}), ("gpt2", 22, {"fan_in_fan_out": True})]:
        task = TaskType.SEQ_CLS if backbone == "bert" else TaskType.FEATURE_EXTRACTION
        targets = ["query", "value"] if backbone == "bert" else ["c_attn"]
        common = dict(task_type=task, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                      init_lora_weights=False, **extra)
        if backbone == "bert":
            peft_fixture("peft-bert-rslora", backbone, seed, LoraConfig(use_rslora=True, **common))
        base, run, key, fixture = BASES[backbone]
        torch.manual_seed(seed)
        model = get_peft_model(base(), LoraConfig(use_dora=True, **common)).eval()
        with torch.no_grad():  # a magnitude away from the norms it starts at
            for name, param in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
        directory = OUT / f"peft-{backbone}-dora"
        save(model, directory, fixture)
        expected(directory / "expected.json", key, run(model))
        # IA3 with peft's default targets for the architecture, vectors random.
        peft_fixture(f"peft-{backbone}-ia3", backbone, seed + 10, IA3Config(task_type=task, init_ia3_weights=False))
    # LoRA on the token embedding (peft's lora_embedding_A/B) beside a projection.
    peft_fixture("peft-bert-lora-embedding", "bert", 27, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["word_embeddings", "query"], init_lora_weights=False))
    # VeRA: random vectors (init_weights=False), shared matrices saved with the adapter.
    peft_fixture("peft-bert-vera", "bert", 28, VeraConfig(
        task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value", "intermediate.dense"],
        init_weights=False, vera_dropout=0.0))
    # OFT: blocks of 8, random skew entries (init_weights=False), the Neumann series.
    peft_fixture("peft-bert-oft", "bert", 29, OFTConfig(
        task_type=TaskType.SEQ_CLS, r=0, oft_block_size=8, target_modules=["query", "value", "output.dense"],
        init_weights=False))
    # AdaLoRA with random factors and a rank pattern as the allocator leaves one: the saved
    # tensors keep the first and third triplet of each module, the scale stays alpha / init_r.
    torch.manual_seed(41)
    model = get_peft_model(bert_base(), AdaLoraConfig(
        task_type=TaskType.SEQ_CLS, init_r=4, target_r=2, lora_alpha=8, lora_dropout=0.0,
        target_modules=["query", "value"], total_step=10)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    pattern = {n.replace(".default", ""): [True, False, True, False]
               for n, _ in model.base_model.model.named_parameters() if "lora_E.default" in n}
    model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, pattern)
    model.peft_config["default"].rank_pattern = pattern
    directory = OUT / "peft-bert-adalora"
    logits = bert_logits(model)
    save(model, directory, "bert-tiny")
    expected(directory / "expected.json", "logits", logits)
    # LoHa and LoKr on BERT (peft has them for nn.Linear only, not GPT-2's Conv1D), every
    # factor random; LoKr at r 2 so that W2 is factored (r < max(n, k)/2 for 32 = 4 x 8).
    peft_fixture("peft-bert-loha", "bert", 25, LoHaConfig(
        task_type=TaskType.SEQ_CLS, r=4, alpha=8, target_modules=["query", "value"], init_weights=False))
    peft_fixture("peft-bert-lokr", "bert", 26, LoKrConfig(
        task_type=TaskType.SEQ_CLS, r=2, alpha=4, target_modules=["query", "value", "output.dense"],
        init_weights=False))
    # PiSSA and OLoRA: what the start is (the residual weight and the factors).
    from safetensors.torch import save_file

    for init in ["pissa", "olora"]:
        torch.manual_seed(23)
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
                            target_modules=["query", "value"], init_lora_weights=init)
        model = get_peft_model(bert_base(), config).eval()
        start = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                prefix = name.removeprefix("base_model.model.")
                start[f"{prefix}.residual"] = module.base_layer.weight.detach().clone()
                start[f"{prefix}.lora_A"] = module.lora_A["default"].weight.detach().clone()
                start[f"{prefix}.lora_B"] = module.lora_B["default"].weight.detach().clone()
        directory = OUT / f"peft-bert-{init}-init"
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in start.items()}, directory / "start.safetensors")
        expected(directory / "expected.json", "logits", bert_logits(model))
        print(f"{directory}: {init} start recorded")


KILN_TO_PEFT = [
    ("kiln-bert-lora", "bert"),
    ("kiln-gpt2-lora", "gpt2"),
    ("kiln-bert-prompt", "bert"),
    ("kiln-gpt2-prompt", "gpt2"),
    ("kiln-gpt2-prefix", "gpt2"),
    ("kiln-bert-rslora", "bert"),
    ("kiln-bert-dora", "bert"),
    ("kiln-gpt2-dora", "gpt2"),
    ("kiln-bert-ia3", "bert"),
    ("kiln-gpt2-ia3", "gpt2"),
    ("kiln-bert-pissa", "bert"),
    ("kiln-bert-loha", "bert"),
    ("kiln-bert-lokr", "bert"),
    ("kiln-bert-lora-embedding", "bert"),
    ("kiln-bert-vera", "bert"),
    ("kiln-bert-oft", "bert"),
    ("kiln-bert-adalora", "bert"),
]


def kiln_to_peft(names=None) -> None:
    for name, backbone in KILN_TO_PEFT:
        if names is not None and name not in names:
            continue
        base, run, key, _ = BASES[backbone]
        directory = OUT / name
        if not (directory / "adapter_config.json").is_file():
            print(f"{directory} missing: run KILN_WRITE_FIXTURES=1 cargo test -p kiln-train --test outputs peft::")
            continue
        model = PeftModel.from_pretrained(base(), directory).eval()
        expected(directory / "transformers.json", key, run(model))
        print(f"{directory}: loaded by peft, {key} recorded")
    if names is not None:
        return
    for name, load, run, key in [
        ("kiln-bert-merged", AutoModelForSequenceClassification, bert_logits, "logits"),
        ("kiln-gpt2-merged", AutoModel, gpt2_hidden, "last_hidden_state"),
    ]:
        directory = OUT / name
        if not (directory / "model.safetensors").is_file():
            print(f"{directory} missing: run KILN_WRITE_FIXTURES=1 cargo test -p kiln-train --test outputs peft::")
            continue
        model = load.from_pretrained(directory).eval()
        expected(directory / "transformers.json", key, run(model))
        print(f"{directory}: loaded by {type(model).__name__}, {key} recorded")


# The texts of kiln's test `predictions_match_the_readme_functions_in_transformers_and_peft`.
PREDICT_TEXTS = [
    "the fire was long",
    "water",
    "some clay in the kiln when it was up",
    "sound of water and fire",
]


def p_tuning_encoders() -> None:
    """fixtures/peft/peft-p-tuning: peft's PromptEncoder of both types with random weights."""
    from peft import PromptEncoderConfig
    from peft.tuners.p_tuning.model import PromptEncoder
    from safetensors.torch import save_file

    directory = OUT / "peft-p-tuning"
    directory.mkdir(parents=True, exist_ok=True)
    recorded = {}
    for seed, kind in [(31, "LSTM"), (32, "MLP")]:
        torch.manual_seed(seed)
        config = PromptEncoderConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=4,
            token_dim=32,
            encoder_hidden_size=16,
            encoder_reparameterization_type=kind,
            num_transformer_submodules=1,
        )
        encoder = PromptEncoder(config).eval()
        with torch.no_grad():
            recorded[kind.lower()] = tensor_json(encoder(torch.arange(4)))
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, directory / f"{kind.lower()}.safetensors")
    write_json(directory / "expected.json", recorded)


COMBINATIONS = ["linear", "cat", "svd", "ties", "magnitude_prune"]


def lora_arithmetic() -> None:
    """fixtures/peft/peft-arith: two LoRA adapters on BertModel (a: r 4, alpha 8, query and value;
    b: r 4, alpha 4, query and key; random A and B), saved as a/ and b/, and combined.safetensors
    with what `add_weighted_adapter(["a", "b"], [0.7, -0.4], ...)` gives for each combination
    (density 0.5, svd_rank 4): `{combination}.{tensor}` in peft's names."""
    from safetensors.torch import save_file

    torch.manual_seed(30)
    # On BertModel: peft refuses to combine adapters that save a classifier (modules_to_save).
    common = dict(task_type=TaskType.FEATURE_EXTRACTION, r=4, lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(AutoModel.from_pretrained(ROOT / "bert-tiny"), LoraConfig(lora_alpha=8, target_modules=["query", "value"], **common), adapter_name="a")
    model.add_adapter("b", LoraConfig(lora_alpha=4, target_modules=["query", "key"], **common))
    directory = OUT / "peft-arith"
    for name in ["a", "b"]:
        model.save_pretrained(directory / "tmp", selected_adapters=[name])
        saved = directory / "tmp" / name
        target = directory / name
        target.mkdir(parents=True, exist_ok=True)
        for file in ["adapter_config.json", "adapter_model.safetensors"]:
            (saved / file).replace(target / file)
        config = json.loads((target / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "fixtures/bert-tiny"
        (target / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    import shutil
    shutil.rmtree(directory / "tmp")
    combined = {}
    for combination in COMBINATIONS:
        name = f"c_{combination}"
        model.add_weighted_adapter(["a", "b"], [0.7, -0.4], adapter_name=name, combination_type=combination,
                                   density=0.5, svd_rank=4)
        for module_name, module in model.named_modules():
            if hasattr(module, "lora_A") and name in module.lora_A:
                combined[f"{combination}.{module_name}.lora_A.weight"] = module.lora_A[name].weight.detach().clone()
                combined[f"{combination}.{module_name}.lora_B.weight"] = module.lora_B[name].weight.detach().clone()
    save_file({k: v.contiguous() for k, v in combined.items()}, directory / "combined.safetensors")
    print(f"{directory}: {len(COMBINATIONS)} combinations recorded")


def readme_predictions() -> None:
    """Runs the Python block of each folder's README.md as written (FOLDER set to the folder) and
    records what its kiln_logits and kiln_predict give."""
    for name in ["kiln-bert-mean-merged", "kiln-bert-cls-lora", "kiln-gpt2-last-merged", "kiln-bert-pooler-merged"]:
        directory = OUT / name
        readme = directory / "README.md"
        if not readme.is_file():
            print(f"{directory} missing: run KILN_WRITE_FIXTURES=1 cargo test -p kiln-train --test outputs peft::")
            continue
        code = re.search(r"```python\n(.*?)```", readme.read_text(), re.S).group(1)
        code = code.replace('FOLDER = "."', f"FOLDER = {str(directory)!r}", 1)
        scope = {}
        exec(compile(code, str(readme), "exec"), scope)
        logits = scope["kiln_logits"](PREDICT_TEXTS)
        write_json(
            directory / "readme_predictions.json",
            {
                "texts": PREDICT_TEXTS,
                "logits": [[float(v) for v in row] for row in logits.tolist()],
                "labels": scope["kiln_predict"](PREDICT_TEXTS),
            },
        )
        print(f"{directory}: README function run, labels recorded")


if __name__ == "__main__":
    import os

    os.chdir(ROOT.parent)  # the READMEs name base models relative to the repository
    import sys

    OUT.mkdir(parents=True, exist_ok=True)
    # `make_peft_fixtures.py p-tuning` writes that fixture alone; `lora-family` the LoRA
    # variants' and IA3's, both ways.
    if sys.argv[1:] == ["p-tuning"]:
        p_tuning_encoders()
        sys.exit()
    if sys.argv[1:] == ["lora-arithmetic"]:
        lora_arithmetic()
        sys.exit()
    if sys.argv[1:] == ["lora-family"]:
        lora_family()
        kiln_to_peft([name for name, _ in KILN_TO_PEFT[5:]])
        sys.exit()
    peft_to_kiln()
    p_tuning_encoders()
    lora_family()
    lora_arithmetic()
    kiln_to_peft()
    readme_predictions()
