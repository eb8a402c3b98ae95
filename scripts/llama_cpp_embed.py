"""Embed sentences with llama.cpp (through llama-cpp-python) from a GGUF file and compare
them with the project's embeddings of the same file.

Usage:
  quant embed MODEL_DIR --text S.txt --weights model.gguf -o ours.safetensors
  python3 scripts/llama_cpp_embed.py model.gguf S.txt ours.safetensors

Prints the mean, 5th percentile and minimum cosine between llama.cpp's sentence embedding and
the project's, sentence by sentence (both mean-pooled and normalised, as the GGUF's
bert.pooling_type and the sentence-transformers head say).
"""
import sys

import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file


def main(model, text, ours):
    sentences = [l.strip() for l in open(text, encoding="utf-8") if l.strip()]
    llm = Llama(model_path=model, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, verbose=False)
    theirs = np.array([llm.embed(s, normalize=True) for s in sentences], dtype=np.float64)
    e = load_file(ours)["embeddings"].astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    cos = (e * theirs).sum(axis=1)
    print(f"{model}: {len(sentences)} sentences, cosine llama.cpp vs quant: mean {cos.mean():.6f}, p5 {np.percentile(cos, 5):.6f}, min {cos.min():.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
