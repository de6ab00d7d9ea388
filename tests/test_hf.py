"""`tritonmoe.hf`: Hugging Face transformers' Mixtral, Qwen2-MoE and Qwen3-MoE models on TritonMoE.

Tiny random models built from their configs (nothing is downloaded): run, patch, run again. fp32
wherever the kernels run (CPU under the interpreter, or the GPU). bf16 runs only on the GPU (marked
`gpu`): block by block on the same inputs, and on a one-layer model, so that both runs route
identically (a later layer's input differs in the last bits between the two runs, which may flip a
near-tied expert choice and would make the comparison measure that instead of the kernels).
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import tritonmoe  # noqa: E402
from helpers import assert_rel_close  # noqa: E402
from tritonmoe.hf import (FAMILIES, TritonMoeBlock, TritonMoeExperts, family_of, from_hf,  # noqa: E402
                          patch_model)

# name: (family, norm_topk_prob); Mixtral always renormalises.
CASES = {
    "mixtral": ("mixtral", True),
    "qwen2_moe": ("qwen2_moe", False),
    "qwen2_moe-norm": ("qwen2_moe", True),
    "qwen3_moe": ("qwen3_moe", True),
    "qwen3_moe-no-norm": ("qwen3_moe", False),
}


def tiny_config(family: str, *, layers=2, hidden=32, ffn=24, experts=4, top_k=2, vocab=64, heads=4,
                norm_topk_prob=True, hidden_act="silu"):
    """A config small enough for the interpreter. initializer_range 0.2 (not 0.02) so that the experts'
    output is not lost beside the residual and the router's probabilities are far from uniform."""
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                  head_dim=hidden // heads, vocab_size=vocab, num_experts_per_tok=top_k, hidden_act=hidden_act,
                  initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=None)
    if family == "mixtral":
        return transformers.MixtralConfig(intermediate_size=ffn, num_local_experts=experts, **common)
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(intermediate_size=2 * ffn, moe_intermediate_size=ffn,
                                           shared_expert_intermediate_size=ffn + 16, num_experts=experts,
                                           norm_topk_prob=norm_topk_prob, **common)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(intermediate_size=2 * ffn, moe_intermediate_size=ffn, num_experts=experts,
                                           norm_topk_prob=norm_topk_prob, **common)
    raise ValueError(f"family: expected mixtral, qwen2_moe or qwen3_moe, got {family!r}")


MODEL_CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM"}


def tiny_model(family: str, dtype=torch.float32, device="cpu", seed=0, **config):
    torch.manual_seed(seed)
    model = getattr(transformers, MODEL_CLASSES[family])(tiny_config(family, **config))
    return model.to(device=device, dtype=dtype).eval()


def moe_blocks(model) -> dict:
    return {name: m for name, m in model.named_modules() if type(m).__name__ in FAMILIES}


def patched_count(model) -> int:
    return sum(isinstance(m, (TritonMoeExperts, TritonMoeBlock)) for m in model.modules())


def token_ids(batch, seq, vocab, device, seed=1):
    return torch.randint(2, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(device)


def block_output(out):
    """transformers >= 5 blocks return the hidden states, 4.x blocks (hidden states, router logits)."""
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("case", CASES)
def test_patched_model_matches(case, device):
    family, norm = CASES[case]
    model = tiny_model(family, device=device, norm_topk_prob=norm)
    ids = token_ids(2, 9, 64, device)
    with torch.no_grad():
        ref = model(ids, output_router_logits=True)
        patch_model(model)
        assert patched_count(model) == 2, "every MoE layer must be patched"
        out = model(ids, output_router_logits=True)
    assert_rel_close(out.logits, ref.logits, torch.float32, case)
    # The router is the model's own: its logits (and so the auxiliary loss) are still reported; the
    # first layer's are bit-identical, a later layer's input differs by the experts' rounding.
    assert len(out.router_logits) == len(ref.router_logits) == 2
    torch.testing.assert_close(out.router_logits[0], ref.router_logits[0], rtol=0, atol=0)
    torch.testing.assert_close(out.router_logits[1], ref.router_logits[1])
    torch.testing.assert_close(out.aux_loss, ref.aux_loss)


@pytest.mark.parametrize("case", CASES)
def test_patched_block_matches(case, device):
    """One block on O(1) inputs, where its output is not diluted by the residual stream."""
    family, norm = CASES[case]
    model = tiny_model(family, device=device, norm_topk_prob=norm)
    name, block = next(iter(moe_blocks(model).items()))
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        ref = block(x)
        patch_model(model)
        out = model.get_submodule(name)(x)
    assert type(out) is type(ref), "the patched block must return what the block returned"
    if isinstance(ref, tuple):
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0)
    assert_rel_close(block_output(out), block_output(ref), torch.float32, case)


def test_greedy_generation_matches(device):
    model = tiny_model("mixtral", device=device)
    prompt = token_ids(1, 5, 64, device)
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=6, do_sample=False)
        patch_model(model)
        out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 11)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_every_impl_and_repatching(impl, device):
    """Patching a patched model again switches its impl and keeps the result."""
    model = tiny_model("qwen2_moe", device=device)
    ids = token_ids(2, 7, 64, device)
    with torch.no_grad():
        ref = model(ids).logits
        patch_model(model)
        patch_model(model, impl=impl)
        out = model(ids).logits
    assert patched_count(model) == 2
    assert all(m.impl == impl for m in model.modules() if isinstance(m, (TritonMoeExperts, TritonMoeBlock)))
    assert_rel_close(out, ref, torch.float32, impl)


def test_fused_layout_keeps_parameters(device):
    """transformers >= 5 stores the experts in TritonMoE's layout: the patch copies nothing and the
    state dict keeps its keys, so a patched model saves and loads as the original."""
    model = tiny_model("qwen3_moe", device=device)
    block = next(iter(moe_blocks(model).values()))
    if isinstance(block.experts, torch.nn.ModuleList):
        pytest.skip("transformers 4.x: per-expert weights are stacked into new parameters")
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    patch_model(model)
    after = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert after == before


@pytest.mark.parametrize("case", ["mixtral", "qwen3_moe", "qwen3_moe-no-norm"])
def test_from_hf_matches_block(case, device):
    family, norm = CASES[case]
    model = tiny_model(family, device=device, norm_topk_prob=norm)
    block = next(iter(moe_blocks(model).values()))
    layer = from_hf(block)
    assert isinstance(layer, tritonmoe.FusedMoE) and layer.renormalize == norm and layer.top_k == 2
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ref = block_output(block(x))
        y = layer(x)
    assert_rel_close(y, ref, torch.float32, case)


def test_from_hf_refuses_a_shared_expert():
    block = next(iter(moe_blocks(tiny_model("qwen2_moe")).values()))
    with pytest.raises(ValueError, match="shared expert"):
        from_hf(block)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="^model: expected at least one"):
        patch_model(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="^impl: expected one of"):
        patch_model(tiny_model("mixtral"), impl="no_such_impl")
    with pytest.raises(TypeError, match="^block: expected one of .*, got Linear"):
        family_of(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"act_fn: expected the SiLU activation"):
        patch_model(tiny_model("mixtral", hidden_act="gelu"))


# ---- GPU, bf16 -------------------------------------------------------------------------------------

GPU_SHAPE = dict(hidden=256, ffn=512, experts=8, top_k=2, vocab=512)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_patched_blocks_match_bf16(family):
    """Each of 4 blocks, fed the very input it got in the unpatched model's run."""
    model = tiny_model(family, torch.bfloat16, "cuda", layers=4, **GPU_SHAPE)
    seen = {}
    hooks = [b.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out)))
             for name, b in moe_blocks(model).items()]
    with torch.no_grad():
        model(token_ids(2, 33, GPU_SHAPE["vocab"], "cuda"))
        for h in hooks:
            h.remove()
        patch_model(model)
        assert patched_count(model) == 4
        for name, (x, ref) in seen.items():
            out = model.get_submodule(name)(x)
            assert_rel_close(block_output(out), block_output(ref), torch.bfloat16, f"{family} {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_one_layer_model_matches_bf16(family):
    model = tiny_model(family, torch.bfloat16, "cuda", layers=1, **GPU_SHAPE)
    ids = token_ids(4, 64, GPU_SHAPE["vocab"], "cuda")
    with torch.no_grad():
        ref = model(ids).logits
        patch_model(model)
        out = model(ids).logits
    assert_rel_close(out, ref, torch.bfloat16, family)


@pytest.mark.gpu
def test_generate_bf16_runs():
    model = patch_model(tiny_model("mixtral", torch.bfloat16, "cuda", **GPU_SHAPE))
    prompt = token_ids(2, 8, GPU_SHAPE["vocab"], "cuda")
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert out.shape == (2, 16) and torch.equal(out[:, :8], prompt)
    assert ((out >= 0) & (out < GPU_SHAPE["vocab"])).all()
