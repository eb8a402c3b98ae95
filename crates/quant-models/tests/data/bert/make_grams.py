"""Makes grams.json: the Gram matrices X^T X of every encoder weight matrix's inputs in the
tiny `plain` checkpoint over golden.json's sentences, from transformers in float64 (forward
hooks on the linear layers; each sentence run alone, so no padding row is counted).
tests/bert.rs compares `Bert::input_grams` with it.

Run from this directory with torch and transformers installed:
    python3 make_grams.py
Per matrix it stores the trace, the sum of all entries and the top-left 3 x 3 block.
"""
import json

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel


def main():
    cfg = json.load(open("plain/config.json"))
    config = BertConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    model = BertModel(config, add_pooling_layer=False).eval().double()
    state = load_file("plain/model.safetensors")
    model.load_state_dict({k: v.double() for k, v in state.items() if not k.startswith("pooler")}, strict=False)
    golden = json.load(open("golden.json"))["plain"]
    grams, tokens = {}, 0

    def hook(name):
        def f(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            g = x.T @ x
            grams[name] = grams[name] + g if name in grams else g
        return f

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("encoder."):
            module.register_forward_hook(hook(name + ".weight"))
    with torch.no_grad():
        for ids, types in zip(golden["ids"], golden["type_ids"]):
            if not ids:
                continue
            model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]))
            tokens += len(ids)
    out = {"tokens": tokens, "matrices": {}}
    for name, g in grams.items():
        out["matrices"][name] = {"trace": g.trace().item(), "sum": g.sum().item(), "corner": g[:3, :3].tolist()}
    json.dump(out, open("grams.json", "w"), indent=1)


if __name__ == "__main__":
    main()
