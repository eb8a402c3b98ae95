"""Extracts the WordNet 3.0 calibration sentences and retrieval pairs in data/wordnet/.

    python3 scripts/wordnet_extract.py [/usr/share/wordnet] [data/wordnet]

Input: WordNet 3.0's data.{noun,verb,adj,adv} (Debian package wordnet-base). For every synset
whose gloss has a usage example of four or more words, the definition is a query and the
first usage example its document. 3,000 such pairs are drawn with a fixed seed (Python's
random.Random(20261202)), in order of the shuffled list:
  - the first 1,000 give calibration.txt: their usage examples, one per line;
  - the other 2,000 give pairs.tsv: definition <TAB> usage example, one pair per line.
Tabs and newlines never occur in glosses; the script checks it.
"""
import os
import random
import re
import sys

SEED = 20261202
TOTAL, CALIBRATION = 3000, 1000


def synsets(path):
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue  # the license header, or no gloss
            gloss = line.split("|", 1)[1].strip()
            parts = [p.strip() for p in gloss.split(";")]
            definition = parts[0]
            examples = [p.strip('"').strip() for p in parts[1:] if p.startswith('"') and p.endswith('"')]
            yield definition, examples


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet"
    out = sys.argv[2] if len(sys.argv) > 2 else "data/wordnet"
    pairs = []
    for pos in ["noun", "verb", "adj", "adv"]:
        for definition, examples in synsets(os.path.join(src, f"data.{pos}")):
            if examples and len(examples[0].split()) >= 4 and len(definition.split()) >= 1:
                pairs.append((definition, examples[0]))
    for q, d in pairs:
        assert "\t" not in q + d and "\n" not in q + d
    rng = random.Random(SEED)
    rng.shuffle(pairs)
    chosen = pairs[:TOTAL]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calibration.txt"), "w", encoding="utf-8") as f:
        for _, example in chosen[:CALIBRATION]:
            f.write(example + "\n")
    with open(os.path.join(out, "pairs.tsv"), "w", encoding="utf-8") as f:
        for definition, example in chosen[CALIBRATION:]:
            f.write(f"{definition}\t{example}\n")
    print(f"{len(pairs)} eligible synsets; wrote {CALIBRATION} calibration sentences and {TOTAL - CALIBRATION} pairs to {out}")


if __name__ == "__main__":
    main()
