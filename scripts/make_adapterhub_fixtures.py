#!/usr/bin/env python3
"""Writes the AdapterHub fixtures of kiln's adapter tests, both ways, on the tiny BERT fixture.
Tests never run this script; they read what it committed.

The `adapters` library pins its own transformers range, so it gets a virtual environment of its
own (torch can come from any other environment through a .pth file, as `.kiln/adapters-venv`
does, or be installed):

    python3 -m venv VENV && VENV/bin/pip install adapters safetensors torch
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VENV/bin/python scripts/make_adapterhub_fixtures.py

(adapters 1.3.0 and transformers 4.57.6 when written.)

AdapterHub to kiln, written here with fixed seeds, every adapter tensor random (a zero
up-projection would test nothing), each directory as `model.save_adapter` writes it:
  fixtures/adapterhub/ah-bert-pfeiffer/  SeqBnConfig (reduction 8) with a 3-label classification
                                         head (AdapterHub's default: 2 layers, tanh, [CLS]);
  fixtures/adapterhub/ah-bert-houlsby/   DoubleSeqBnConfig (reduction 8, swish);
  fixtures/adapterhub/ah-bert-parallel/  ParBnConfig (reduction 8, scaling 4);
  fixtures/adapterhub/ah-bert-drop/      SeqBnConfig with leave_out [0] (AdapterDrop);
  fixtures/adapterhub/ah-bert-mam/       MAMConfig (prefix 3 rows, MLP 16 wide; ParBn reduction
                                         8), in `pytorch_adapter.bin` (its shared prefix
                                         tensors cannot go in safetensors);
  fixtures/adapterhub/ah-bert-fusion/    two SeqBn adapters a/ and b/ and their fusion in
                                         fusion/ (save_adapter_fusion, DynamicAdapterFusionConfig).
  fixtures/adapterhub/ah-bert-compacter++/  CompacterPlusPlusConfig (reduction 4, phm_rank 2);
  fixtures/adapterhub/ah-bert-compacter/    CompacterConfig (reduction 4), in pytorch_adapter.bin;
  fixtures/adapterhub/ah-bert-loreft/       LoReftConfig (prefix 2, suffix 2, r 2) in eval mode;
  fixtures/adapterhub/ah-bert-loreft-tied/  the same with tied_weights;
  fixtures/adapterhub/ah-bert-unipelt/      UniPELTConfig() (gated LoRA r 8 on q and v, gated
                                            prefix of 10 rows through its 512-wide MLP, gated
                                            SeqBn adapter), in `pytorch_adapter.bin`;
  fixtures/adapterhub/ah-bert-compose/      SeqBn adapters a/ and b/ with 3-label heads, and in
                                            compositions.json the last hidden state under
                                            Stack(a, b), Parallel(a, b),
                                            BatchSplit(a, b, batch_sizes=[1, 1]) and
                                            Average(a, b) with weights [1, 3], and the heads'
                                            logits under Stack and Parallel.
Each has expected.json: the inputs, the last hidden state of the base model under the active
adapter (or Fuse), and the head's logits where there is a head.

kiln to AdapterHub, checked here: the directories kiln's test writes with KILN_WRITE_FIXTURES=1
(fixtures/adapterhub/kiln-bert-*) are loaded with `model.load_adapter(dir, use_safetensors=True)`
(and `load_adapter_fusion`), and transformers.json records the outputs they give on the same
inputs, which kiln's outputs must equal.
"""
import json
from pathlib import Path

import torch
from adapters import (
    BertAdapterModel,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    Fuse,
    LoReftConfig,
    MAMConfig,
    UniPELTConfig,
    ParBnConfig,
    PrefixTuningConfig,
    SeqBnConfig,
)
from adapters.composition import Average, BatchSplit, Parallel, Stack

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
OUT = ROOT / "adapterhub"

# The peft fixtures' inputs: inside the tiny vocabulary, the second row right-padded.
INPUT_IDS = [[2, 5, 100, 101, 159, 102, 137, 3], [2, 35, 85, 61, 3, 0, 0, 0]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]]


def tensor_json(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": [float(v) for v in t.reshape(-1).tolist()]}


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, separators=(",", ":")) + "\n")


def base() -> BertAdapterModel:
    return BertAdapterModel.from_pretrained(ROOT / "bert-tiny").eval()


def outputs(model, with_head: bool) -> dict:
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(ATTENTION_MASK)
    with torch.no_grad():
        recorded = {
            "last_hidden_state": tensor_json(
                model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            )
        }
        if with_head:
            recorded["logits"] = tensor_json(model(input_ids=ids, attention_mask=mask).logits)
    return recorded


def expected(directory: Path, model, with_head: bool) -> None:
    write_json(
        directory / "expected.json",
        {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, **outputs(model, with_head)},
    )


def randomise(model, names) -> None:
    """Every parameter of the named adapters, fusions and heads drawn from N(0, 0.1²); a fusion's
    value matrix around the identity, as trained ones stay; Compacter's shared rules too (they
    start at 1e-4). LoReFT's `original` keeps its -I diagonal (torch truncates it to the
    reflections' signs), so only the entries that define the reflections are random."""
    with torch.no_grad():
        for path, param in model.named_parameters():
            if any(f".{name}." in path or path.startswith(f"heads.{name}.") for name in names):
                param.normal_(0.0, 0.1)
                if path.endswith("value.weight"):
                    param += torch.eye(param.shape[0])
                if path.endswith("weight.original"):
                    param.diagonal().fill_(-1.0)


def clean(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for file in directory.glob("*"):
        if file.is_file():
            file.unlink()


def single(name: str, config, seed: int, head: bool = False, safetensors: bool = True) -> None:
    torch.manual_seed(seed)
    model = base()
    model.add_adapter(name, config=config)
    if head:
        model.add_classification_head(name, num_labels=3)
    randomise(model, [name])
    model.set_active_adapters(name)
    model.eval()
    directory = OUT / f"ah-bert-{name}"
    clean(directory)
    model.save_adapter(directory, name, with_head=head, use_safetensors=safetensors)
    expected(directory, model, head)


def fusion(seed: int) -> None:
    torch.manual_seed(seed)
    model = base()
    for name in ["a", "b"]:
        model.add_adapter(name, config=SeqBnConfig(reduction_factor=8))
    model.add_adapter_fusion(Fuse("a", "b"))
    randomise(model, ["a", "b", "a,b"])
    model.set_active_adapters(Fuse("a", "b"))
    model.eval()
    directory = OUT / "ah-bert-fusion"
    for name in ["a", "b"]:
        clean(directory / name)
        model.save_adapter(directory / name, name, with_head=False, use_safetensors=True)
    clean(directory / "fusion")
    model.save_adapter_fusion(directory / "fusion", "a,b", use_safetensors=True)
    expected(directory, model, False)


def compositions(seed: int) -> None:
    """Two SeqBn adapters with heads, and what each composition block computes with them."""
    torch.manual_seed(seed)
    model = base()
    for name in ["a", "b"]:
        model.add_adapter(name, config=SeqBnConfig(reduction_factor=8))
        model.add_classification_head(name, num_labels=3)
    randomise(model, ["a", "b"])
    model.eval()
    directory = OUT / "ah-bert-compose"
    for name in ["a", "b"]:
        clean(directory / name)
        model.save_adapter(directory / name, name, with_head=True, use_safetensors=True)
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(ATTENTION_MASK)
    recorded = {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK}
    for key, setup in [
        ("stack", Stack("a", "b")),
        ("parallel", Parallel("a", "b")),
        ("batch_split", BatchSplit("a", "b", batch_sizes=[1, 1])),
        ("average", Average("a", "b", weights=[1.0, 3.0])),
    ]:
        model.set_active_adapters(setup)
        with torch.no_grad():
            hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            recorded[key] = {"last_hidden_state": tensor_json(hidden)}
            # Stack's head is its last adapter's; Parallel's heads run one per copy of the batch
            # (rows i·B.. of `logits` are head i's). The other blocks keep whichever head was
            # active, so their logits say nothing.
            if key in ("stack", "parallel"):
                logits = model(input_ids=ids, attention_mask=mask).logits
                recorded[key]["logits"] = tensor_json(logits)
    write_json(directory / "compositions.json", recorded)


def adapterhub_to_kiln() -> None:
    single("pfeiffer", SeqBnConfig(reduction_factor=8), 21, head=True)
    single("houlsby", DoubleSeqBnConfig(reduction_factor=8), 22)
    single("parallel", ParBnConfig(reduction_factor=8), 23)
    single("drop", SeqBnConfig(reduction_factor=8, leave_out=[0]), 24)
    mam = MAMConfig(
        PrefixTuningConfig(prefix_length=3, bottleneck_size=16), ParBnConfig(reduction_factor=8)
    )
    single("mam", mam, 25, safetensors=False)
    fusion(26)
    single("compacter++", CompacterPlusPlusConfig(reduction_factor=4, phm_rank=2), 27)
    single("compacter", CompacterConfig(reduction_factor=4), 28, safetensors=False)
    single("loreft", LoReftConfig(prefix_positions=2, suffix_positions=2, r=2), 29)
    reft = LoReftConfig(prefix_positions=2, suffix_positions=2, r=2, tied_weights=True)
    single("loreft-tied", reft, 30)
    single("unipelt", UniPELTConfig(), 32, safetensors=False)
    compositions(31)


def kiln_to_adapterhub() -> None:
    """Loads what kiln's test exported and records AdapterHub's outputs with it."""
    for directory in sorted(OUT.glob("kiln-bert-*")):
        model = base()
        fused = directory / "fusion"
        if fused.is_dir():
            names = [
                model.load_adapter(str(directory / name), use_safetensors=True)
                for name in ["a", "b"]
            ]
            model.load_adapter_fusion(str(fused), use_safetensors=True)
            model.set_active_adapters(Fuse(*names))
            with_head = False
        else:
            with_head = (directory / "head_config.json").is_file()
            name = model.load_adapter(str(directory), use_safetensors=True, with_head=with_head)
            model.set_active_adapters(name)
        model.eval()
        write_json(directory / "transformers.json", outputs(model, with_head))
        print(f"{directory.name}: loaded, outputs recorded")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    adapterhub_to_kiln()
    kiln_to_adapterhub()
