"""Writes fixtures/m2-tiny (a tiny M2-BERT checkpoint in the reference's layout) and
fixtures/reference/m2_tiny.json (its outputs), with the reference code itself.

The reference implementation is not on PyPI: point --m2-repo at a checkout of HazyResearch/m2
(the script imports its `bert/src`). Run once, offline, CPU only:

    python3 -m venv /tmp/kiln-venv
    /tmp/kiln-venv/bin/pip install torch transformers safetensors einops opt_einsum
    HF_HUB_OFFLINE=1 /tmp/kiln-venv/bin/python scripts/make_m2_fixture.py --m2-repo PATH/TO/m2

Rust tests read the committed output; they never run Python.
"""

import argparse
import json
import os
import shutil
import sys
import types

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")

CONFIG = {
    "model_type": "bert",
    "architectures": ["BertForSequenceClassification"],
    "vocab_size": 167,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "monarch_mixer_sequence_mixing": True,
    "long_conv_l_max": 32,
    "long_conv_kernel_learning_rate": 1e-3,
    "hyena_lr_pos_emb": 1e-5,
    "hyena_w": 10,
    "hyena_w_mod": 1,
    "hyena_wd": 0.1,
    "hyena_emb_dim": 5,
    "hyena_filter_dropout": 0.2,
    "hyena_filter_order": 8,
    "hyena_training_additions": True,
    "bidirectional": True,
    "residual_long_conv": True,
    "use_glu_mlp": True,
    "use_monarch_mlp": True,
    "monarch_mlp_nblocks": 4,
    "use_positional_encodings": True,
    "pool_all": False,
    "use_flash_mm": False,
    "use_flash_fft": False,
    # Read by the reference's constructors; off in the published configs.
    "use_cls_token": False,
    "sequence_token_planting": False,
    "attention_pooling": False,
    "expand_positional_embeddings": False,
    "performing_BEIR_evaluation": False,
    "use_normalized_embeddings": False,
    "gather_sentence_embeddings": False,
    "alibi_starting_size": 512,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--m2-repo", required=True, help="a checkout of HazyResearch/m2")
    args = parser.parse_args()
    bert_dir = os.path.join(os.path.abspath(args.m2_repo), "bert")
    sys.path.insert(0, bert_dir)
    sys.path.insert(0, os.path.join(bert_dir, "src"))
    # `src/__init__.py` pulls in the training stack (composer); the model needs none of it.
    package = types.ModuleType("src")
    package.__path__ = [os.path.join(bert_dir, "src")]
    sys.modules["src"] = package
    from src.bert_layers import BertModel  # noqa: E402
    from src.configuration_bert import BertConfig  # noqa: E402

    torch.manual_seed(0)
    config = BertConfig(**CONFIG)
    model = BertModel(config, add_pooling_layer=True).eval()
    # Move every parameter off its initial value so the test checks each one.
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(0.05 * torch.randn_like(param))

    ids = torch.tensor([[(7 * i + 3 * row) % 167 for i in range(32)] for row in range(2)])
    with torch.no_grad():
        hidden, pooled = model(ids, torch.zeros_like(ids), torch.ones_like(ids))

    out = os.path.join(FIXTURES, "m2-tiny")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    shutil.copy(os.path.join(FIXTURES, "bert-tiny", "vocab.txt"), os.path.join(out, "vocab.txt"))
    # Shared tensors (the filter's one `freq` under three names) are written once per name.
    state = {f"bert.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    def tensor(t):
        return {"shape": list(t.shape), "values": t.flatten().tolist()}

    with open(os.path.join(FIXTURES, "reference", "m2_tiny.json"), "w") as f:
        json.dump(
            {
                "input_ids": ids.tolist(),
                "last_hidden_state": tensor(hidden),
                "pooler_output": tensor(pooled),
            },
            f,
        )
    print(f"wrote {out} and fixtures/reference/m2_tiny.json")


if __name__ == "__main__":
    main()
