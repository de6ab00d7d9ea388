"""Small layers for the interpreter count: shapes and routings that exercise every mask.

Each `SmallLayer` builds its inputs deterministically. Routings:
- `uniform`: random router weights.
- `skewed`: a Zipf-like bias towards low expert ids (hot experts, several BLOCK_M blocks each).
- `empty_expert`: the last expert's router row is strongly negative, so no token picks it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tritonmoe.config import with_expert_order

ROUTINGS = ("uniform", "skewed", "empty_expert")


@dataclass(frozen=True)
class SmallLayer:
    tokens: int
    hidden: int
    ffn: int
    experts: int
    top_k: int
    dtype: torch.dtype = torch.float32
    routing: str = "uniform"
    seed: int = 0
    desc: bool = False  # run with the config's DESC flag on both GEMMs (the tensor-descriptor kernels)
    tail: tuple[int, int] | None = None  # (BLOCK_M, TAIL_M): run with tail blocks
    combine: bool = False  # the down projection that sums each token's choices itself (the down config's COMBINE)
    persistent: bool = False  # the persistent gate/up kernel (the gate_up config's PERSISTENT; with desc or without)
    route_split: bool = False  # the routing through split partial logits and a selection launch (ROUTE_SPLIT)
    expert_order: bool = False  # both GEMMs' tiles in expert order (the GEMM configs' EXPERT_ORDER)

    def config(self, cfg: dict) -> dict:
        """The layer config the count runs: `cfg` (the resolved default) with this layer's overrides."""
        if self.desc:
            cfg = {**cfg, "gate_up": {**cfg["gate_up"], "DESC": True}, "down": {**cfg["down"], "DESC": True}}
        if self.persistent:
            cfg = {**cfg, "gate_up": {**cfg["gate_up"], "PERSISTENT": True}}
        if self.tail:
            cfg = {**cfg, "BLOCK_M": self.tail[0], "TAIL_M": self.tail[1]}
        if self.combine:
            cfg = {**cfg, "down": {"BLOCK_N": 16, "BLOCK_K": 16, "COMBINE": True}}
        if self.route_split:
            cfg = {**cfg, "ROUTE_SPLIT": True}
        if self.expert_order:
            cfg = with_expert_order(cfg)
        return cfg

    @property
    def name(self) -> str:
        """The `model` column of its traffic.csv rows."""
        return (f"small-H{self.hidden}-F{self.ffn}-E{self.experts}-K{self.top_k}-{self.routing}"
                + ("-desc" if self.desc else "") + (f"-bm{self.tail[0]}-tail{self.tail[1]}" if self.tail else "") + ("-combine" if self.combine else "") + ("-persistent" if self.persistent else "") + ("-split" if self.route_split else "") + ("-order" if self.expert_order else ""))

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, router_weight, w_gate_up, w_down) on the CPU."""
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing: expected one of {ROUTINGS}, got {self.routing!r}")
        g = torch.Generator().manual_seed(self.seed)
        T, H, F, E = self.tokens, self.hidden, self.ffn, self.experts
        # Positive x, so that a router row's bias moves every token's logit the same way.
        x = torch.rand(T, H, generator=g)
        wr = torch.randn(E, H, generator=g) * H ** -0.5
        if self.routing == "skewed":
            wr += (0.3 / torch.arange(1, E + 1, dtype=torch.float32))[:, None] * (8 / H)
        elif self.routing == "empty_expert":
            wr[-1] = -1.0
        w_gate_up = torch.randn(E, 2 * F, H, generator=g) * H ** -0.5
        w_down = torch.randn(E, H, F, generator=g) * F ** -0.5
        return tuple(t.to(self.dtype).contiguous() for t in (x, wr, w_gate_up, w_down))


# H and F off the block sizes (16) in most; an empty expert; skew (an expert over several BLOCK_M
# blocks); one token; fp16 elements. Routing and alignment take each of their paths: one program
# for both (T <= 32), routing then a one-program alignment (T = 40), and routing then the chunked
# alignment (E = 300, so BLOCK_E = 512 and 72 slots make three chunks; 240 slots take the parallel layout).
SMALL_LAYERS = (
    SmallLayer(tokens=7, hidden=40, ffn=24, experts=4, top_k=2),
    SmallLayer(tokens=20, hidden=32, ffn=32, experts=4, top_k=2, routing="skewed", seed=1),
    SmallLayer(tokens=13, hidden=24, ffn=40, experts=6, top_k=2, routing="empty_expert", seed=2),
    SmallLayer(tokens=1, hidden=48, ffn=20, experts=8, top_k=3, dtype=torch.float16, seed=3),
    SmallLayer(tokens=24, hidden=16, ffn=18, experts=300, top_k=3, seed=4),
    SmallLayer(tokens=40, hidden=24, ffn=16, experts=5, top_k=2, dtype=torch.float16, routing="skewed", seed=5),
    # The descriptor kernels: boxes clipped at H and F (fp32); fp16 with F*2 bytes not a multiple of 16,
    # so the down projection falls back to the pointer kernel while gate_up takes descriptors.
    SmallLayer(tokens=20, hidden=40, ffn=24, experts=4, top_k=2, seed=6, desc=True),
    SmallLayer(tokens=24, hidden=32, ffn=20, experts=4, top_k=2, dtype=torch.float16, routing="skewed", seed=7,
               desc=True),
    # Tail blocks (see `tritonmoe.align`): up to three 16-row tails after 64-row blocks, pointer kernels; and
    # 32-row blocks with 16-row tails through the descriptor kernels.
    SmallLayer(tokens=60, hidden=40, ffn=24, experts=4, top_k=2, routing="skewed", seed=8, tail=(64, 16)),
    SmallLayer(tokens=44, hidden=32, ffn=24, experts=3, top_k=2, seed=9, desc=True, tail=(32, 16)),
    # The chunked alignment's parallel layout (`align.layout_plan`): 240 slots over 300 experts make 256 blocks,
    # more than the one-program kernel walks.
    SmallLayer(tokens=80, hidden=16, ffn=16, experts=300, top_k=3, seed=10),
    # The down projection with the combine (`down.down_combine`): three choices (a padded fourth, masked), H and F
    # off the blocks, and fp16 with two tokens sharing experts.
    SmallLayer(tokens=3, hidden=40, ffn=24, experts=8, top_k=3, seed=11, combine=True),
    SmallLayer(tokens=2, hidden=32, ffn=20, experts=4, top_k=2, dtype=torch.float16, seed=12, combine=True),
    # The persistent gate/up kernel: tiles walked by a few programs, boxes clipped at H and F (fp32; TMA store), and
    # fp16 rows of F*2 bytes off 16 (pointer store).
    SmallLayer(tokens=30, hidden=40, ffn=24, experts=4, top_k=2, seed=13, desc=True, persistent=True),
    SmallLayer(tokens=24, hidden=32, ffn=20, experts=4, top_k=2, dtype=torch.float16, seed=14, desc=True,
               persistent=True),
    # PERSISTENT without DESC: the tokens gathered inside the persistent loop (pointer loads of x, K = 3).
    SmallLayer(tokens=21, hidden=40, ffn=24, experts=6, top_k=3, seed=15, persistent=True),
    # The split routing (`routing.route_split`, forced by ROUTE_SPLIT): past the one routing-and-alignment program
    # (T > 32); H over two slices, the second partial; experts over two blocks, the second partial.
    SmallLayer(tokens=40, hidden=300, ffn=24, experts=20, top_k=3, seed=16, route_split=True),
    # Expert order (EXPERT_ORDER): the pointer kernels with tail blocks, the descriptor ones, the persistent gate/up
    # (tokens gathered first, and inside the loop); an expert over several blocks (skewed) and one without tokens.
    SmallLayer(tokens=60, hidden=40, ffn=24, experts=4, top_k=2, routing="skewed", seed=17, tail=(64, 16),
               expert_order=True),
    SmallLayer(tokens=13, hidden=24, ffn=40, experts=6, top_k=2, routing="empty_expert", seed=18, desc=True,
               expert_order=True),
    SmallLayer(tokens=30, hidden=40, ffn=24, experts=4, top_k=2, seed=19, desc=True, persistent=True,
               expert_order=True),
    SmallLayer(tokens=21, hidden=40, ffn=24, experts=6, top_k=3, seed=20, persistent=True, expert_order=True),
    # Extended last blocks (BLOCK_M 32, TAIL_M 48): experts of 33-48 slots take one 48-row block, larger rests a padded
    # block; the persistent gate/up over blocks of both heights, the pointer and descriptor kernels' extended tiles.
    SmallLayer(tokens=50, hidden=40, ffn=24, experts=3, top_k=2, seed=21, tail=(32, 48), persistent=True,
               expert_order=True),
    SmallLayer(tokens=56, hidden=32, ffn=20, experts=3, top_k=2, dtype=torch.float16, seed=22, tail=(32, 48)),
    SmallLayer(tokens=50, hidden=40, ffn=24, experts=3, top_k=2, seed=23, desc=True, tail=(32, 48)),
)
