"""Patch a Hugging Face Mixtral model onto TritonMoE's kernels and generate a few tokens.

    python experiments/examples/hf_generate.py [--tokens 8] [--impl tritonmoe_fused]

The model is a small randomly initialised Mixtral built from its config (nothing is downloaded), so
the tokens mean nothing; the script prints the greedy continuation of the original model and of the
patched one. On a GPU it runs in bf16; without one it falls back to fp32 on the CPU under Triton's
interpreter (slow, hence a tinier model). A pretrained checkpoint is patched the same way:
`patch_model(MixtralForCausalLM.from_pretrained(..., dtype=torch.bfloat16, device_map="cuda"))`.
"""
from __future__ import annotations

import argparse
import os

import torch

if not torch.cuda.is_available():  # before transformers or tritonmoe import triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import MixtralConfig, MixtralForCausalLM  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.hf import patch_model  # noqa: E402


def tiny_mixtral(on_gpu: bool) -> MixtralConfig:
    size = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, vocab_size=1000) if on_gpu else \
        dict(hidden_size=32, intermediate_size=24, num_hidden_layers=2, vocab_size=100)
    return MixtralConfig(num_attention_heads=8, num_key_value_heads=4, head_dim=size["hidden_size"] // 8,
                         num_local_experts=8, num_experts_per_tok=2, pad_token_id=0, eos_token_id=None, **size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8, help="new tokens to generate")
    parser.add_argument("--impl", default="tritonmoe_fused", choices=tritonmoe.IMPLS)
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    torch.manual_seed(0)
    config = tiny_mixtral(on_gpu)
    model = MixtralForCausalLM(config).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(1, config.vocab_size, (1, 8), device=device)

    with torch.no_grad():
        original = model.generate(prompt, max_new_tokens=args.tokens, do_sample=False)
        patch_model(model, impl=args.impl)
        patched = model.generate(prompt, max_new_tokens=args.tokens, do_sample=False)

    print(f"device {torch.cuda.get_device_name() if on_gpu else 'cpu (Triton interpreter)'}, {dtype}, impl {args.impl}")
    print("original:", original[0, prompt.shape[1]:].tolist())
    print("patched: ", patched[0, prompt.shape[1]:].tolist())


if __name__ == "__main__":
    main()
