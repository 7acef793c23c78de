#!/usr/bin/env python3
"""Writes a multi-label task of real text built from BBC News (fetched by `cargo xtask assets`):
every document's first 45 words, and for a seeded half of them the first 45 words of a document
of another topic after it, labelled with both topics. JSONL rows `{"text": ..., "labels": [...]}`,
which `kiln train` reads as multi-label (list labels). BBC News itself is single-label; this is a
constructed task, documented as such in docs/results.md.

Usage: scripts/make_bbc_multilabel.py [BBC_DIR] [OUT]   (defaults: .kiln/data/bbcnews,
runs/data/bbc-multi.jsonl)"""
import json
import random
import sys
from pathlib import Path

WORDS = 45


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".kiln/data/bbcnews")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/data/bbc-multi.jsonl")
    documents = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / topic).glob("*.txt")):
            try:
                words = path.read_text(encoding="utf-8").split()
            except UnicodeDecodeError:
                continue  # sports/199.txt, which kiln skips too
            documents.append((topic, words[:WORDS]))
    rng = random.Random(7)
    rows = []
    for topic, words in documents:
        labels, text = {topic}, list(words)
        if rng.random() < 0.5:
            other_topic, other = rng.choice([d for d in documents if d[0] != topic])
            labels.add(other_topic)
            text += other
        rows.append({"text": " ".join(text), "labels": sorted(labels)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} rows, {sum(len(r['labels']) == 2 for r in rows)} with two topics -> {out}")


if __name__ == "__main__":
    main()
