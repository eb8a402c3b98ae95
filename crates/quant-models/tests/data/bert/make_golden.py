"""Makes the tiny BERT checkpoints and torch's embeddings that tests/bert.rs compares against.

Run from this directory with torch, transformers and tokenizers installed:
    python3 make_golden.py
It writes four model directories (random weights, a 90-token WordPiece vocabulary):
  plain/     names without prefix, F32, gelu, mean pooling + normalisation (modules.json)
  prefixed/  names with the `bert.` prefix (and a pooler the loader ignores), F16, gelu_new,
             no modules.json (so mean pooling, not normalised)
  cls/       no prefix, BF16, relu, CLS pooling without normalisation
  max/       no prefix, F32, gelu, max pooling + normalisation
and golden.json: for each directory the sentences' token ids and torch's embeddings computed
in float64 from the stored (rounded) weights, as a padded batch with an attention mask.
"""
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders
from transformers import BertConfig, BertModel

SENTENCES = [
    "Hello world",
    "a",
    "",
    "?!...,;",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u65e5\u672c",
    "MiXeD CaSe tExT with Numbers 123 and 4567",
    "this sentence is much longer than the tiny model's sixteen positions so it must be cut short",
    "the cat sat on the mat. the dog ran!",
]

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "hello", "world", "with", "and", "text", "this", "is", "much",
         "long", "model", "cut", "short", "case", "mixed", "number", "so", "it", "must", "be", "than", "tiny", "cafe",
         "naive", "resume"]


def vocab():
    v = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    v += list("abcdefghijklmnopqrstuvwxyz0123456789.,;!?'")
    v += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    v += WORDS
    return {t: i for i, t in enumerate(dict.fromkeys(v))}


def tokenizer(vocab):
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    tok.enable_truncation(16)
    return tok


def build(name, seed, act, dtype, prefix, pooling, normalize, vocab_size):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, type_vocab_size=2, hidden_act=act,
                     layer_norm_eps=1e-12, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=True).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            # Norms away from gain 1 / bias 0 so their parameters matter in the comparison.
            p.copy_(torch.randn_like(p) * (0.3 if "LayerNorm" in n else 0.08) + (1.0 if n.endswith("LayerNorm.weight") else 0.0))
    os.makedirs(name, exist_ok=True)
    state = {(prefix + k): v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    save_file(state, f"{name}/model.safetensors")
    cfgd = cfg.to_dict()
    keep = ["model_type", "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act", "position_embedding_type",
            "pad_token_id"]
    with open(f"{name}/config.json", "w") as f:
        json.dump({k: cfgd[k] for k in keep if k in cfgd}, f, indent=2)
    if pooling is not None:
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        with open(f"{name}/modules.json", "w") as f:
            json.dump(mods, f, indent=2)
        os.makedirs(f"{name}/1_Pooling", exist_ok=True)
        with open(f"{name}/1_Pooling/config.json", "w") as f:
            json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
                       "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
                       "pooling_mode_mean_sqrt_len_tokens": False}, f, indent=2)
    # The reference: float64 from the stored (rounded) weights.
    ref = BertModel(cfg, add_pooling_layer=True).eval().double()
    ref.load_state_dict({k[len(prefix):]: v.double() for k, v in state.items()}, strict=False)
    return ref


def embed(model, enc, pooling, normalize):
    n = len(enc)
    longest = max(len(e.ids) for e in enc)
    ids = torch.zeros((n, longest), dtype=torch.long)
    types = torch.zeros((n, longest), dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        types[i, :len(e.ids)] = torch.tensor(e.type_ids)
        mask[i, :len(e.ids)] = 1
    with torch.no_grad():
        h = model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).double()
    if pooling == "cls":
        e = h[:, 0]
    elif pooling == "max":
        e = h.masked_fill(m == 0, -1e300).max(dim=1).values
    else:
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if normalize:
        e = torch.nn.functional.normalize(e, p=2, dim=1)
    return e


def main():
    v = vocab()
    tok = tokenizer(v)
    golden = {}
    for name, seed, act, dtype, prefix, pooling, normalize in [
        ("plain", 1, "gelu", torch.float32, "", "mean", True),
        ("prefixed", 2, "gelu_new", torch.float16, "bert.", None, False),
        ("cls", 3, "relu", torch.bfloat16, "", "cls", False),
        ("max", 4, "gelu", torch.float32, "", "max", True),
    ]:
        ref = build(name, seed, act, dtype, prefix, pooling, normalize, len(v))
        tok.save(f"{name}/tokenizer.json")
        enc = tok.encode_batch(SENTENCES)
        e = embed(ref, enc, pooling or "mean", normalize)
        golden[name] = {"ids": [x.ids for x in enc], "type_ids": [x.type_ids for x in enc],
                        "truncated": sum(1 for x in enc if x.overflowing), "embeddings": e.tolist()}
    golden["sentences"] = SENTENCES
    with open("golden.json", "w") as f:
        json.dump(golden, f)


if __name__ == "__main__":
    main()
