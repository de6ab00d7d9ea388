"""Pieces shared by the grouped-GEMM kernels: program ordering, an aligned block's extent and rows, the
gate/up accumulation from one load of x, and the dot precision."""
import triton
import triton.language as tl

from ._host import next_power_of_2


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Maps a 1-D program id to (pid_m, pid_n), GROUP_M row blocks at a time (L2 reuse of weights)."""
    width = GROUP_M * num_pid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def tile_of(pid, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr):
    """(pid_m, pid_n) of program/tile `pid`. ORDER_BLOCKS == 0: `grouped_pid` over all row blocks. Otherwise expert by
    expert: an expert's tiles (its blocks, contiguous in the alignment, times every column block) come one after the
    other, and `grouped_pid` orders them within it. Tiles that run at once then read each expert's weight tile from
    DRAM about once; with groups that cut across experts, an expert's blocks could fall into different groups and
    stream its weights again. ORDER_BLOCKS (a power of two >= the blocks in `expert_ids`, -1 marking unused ones)
    sizes the vector load that finds the expert's first block and block count. Programs past the used tiles get an
    unused block (height 0)."""
    if ORDER_BLOCKS == 0:
        return grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M)
    else:
        f = pid // num_pid_n  # a block of the expert whose tiles hold `pid`: tiles before it are (blocks before) * N
        expert = tl.load(expert_ids_ptr + tl.minimum(f, num_pid_m - 1))
        bs = tl.arange(0, ORDER_BLOCKS)
        ids = tl.load(expert_ids_ptr + bs, mask=bs < num_pid_m, other=-1)
        first = tl.sum(((ids >= 0) & (ids < expert)).to(tl.int32))
        count = tl.sum((ids == expert).to(tl.int32))
        used = (f < num_pid_m) & (expert >= 0)
        local = tl.where(used, pid - first * num_pid_n, 0)
        local_m, pid_n = grouped_pid(local, tl.maximum(count, 1), num_pid_n, GROUP_M)
        return tl.where(used, first + local_m, f), tl.where(used, pid_n, 0)


@triton.jit
def block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr):
    """First aligned row and height of block `pid_m`: BLOCK_M, TAIL_M (a tail block) or 0 (unused).
    Without tails (TAIL_M == BLOCK_M) the rows follow from the block's index and only the used-row count is
    read; with tails from `block_rows` (see `tritonmoe.align`)."""
    if TAIL_M == BLOCK_M:
        row0 = pid_m * BLOCK_M
        height = tl.where(row0 < tl.load(num_post_ptr), BLOCK_M, 0)
    else:
        row0 = tl.load(block_rows_ptr + pid_m)
        height = tl.load(block_rows_ptr + pid_m + 1) - row0
    return row0, height


@triton.jit
def block_rows_slots(sorted_ids_ptr, row0, num_routed, ROWS: tl.constexpr):
    """ROWS aligned rows from `row0`: their positions, routed slots and which hold a slot (an extended block's extra
    rows, whose expert the block's first rows already read)."""
    rows = row0 + tl.arange(0, ROWS)
    slot = tl.load(sorted_ids_ptr + rows)
    return rows, slot, slot < num_routed


@triton.jit
def block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M: tl.constexpr):
    """Block `pid_m` of BLOCK_M rows from aligned row `row0`: its expert, row positions, routed slots and which
    rows hold a slot."""
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    rows = row0 + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ids_ptr + rows)
    return expert, rows, slot, slot < num_routed


@triton.jit
def gate_up_accumulate(
    x_ptr, w_ptr, token, row_ok, expert, cols, col_ok, gate_row0, up_row0, H,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
    WITH_UP: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`x[token] @ W[e, gate_row0 + cols]^T` in fp32 and, with WITH_UP, `x[token] @ W[e, up_row0 + cols]^T`
    from the same load of each x tile (the fusion's one load of the tokens). Returns (acc_gate, acc_up)."""
    acc_g, acc_u, _acc_ge, _acc_ue = gate_up_accumulate_ext(
        x_ptr, w_ptr, token, row_ok, token, row_ok, expert, cols, col_ok, gate_row0, up_row0, H,
        stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
        WITH_UP, EVEN_K, PRECISION, BLOCK_M, 0, BLOCK_N, BLOCK_K)
    return acc_g, acc_u


@triton.jit
def gate_up_accumulate_ext(
    x_ptr, w_ptr, token, row_ok, token_e, row_ok_e, expert, cols, col_ok, gate_row0, up_row0, H,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
    WITH_UP: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`gate_up_accumulate`, and with EXT_M > 0 for an extended block: tokens `token` (BLOCK_M rows) and `token_e`
    (EXT_M rows) both meet each gate (and up) weight tile as it is loaded. Returns (acc_gate, acc_up, acc_gate_e,
    acc_up_e); with EXT_M == 0 the last two are placeholders (the first two's zeros), and `token_e` is not read."""
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xt + ks[None, :] * stride_xh
    w_base = w_ptr + expert * stride_we + ks[:, None] * stride_wh
    g_ptrs = w_base + (gate_row0 + cols)[None, :].to(tl.int64) * stride_wn
    u_ptrs = w_base + (up_row0 + cols)[None, :].to(tl.int64) * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if EXT_M > 0:
        e_ptrs = x_ptr + token_e[:, None] * stride_xt + ks[None, :] * stride_xh
        acc_ge = tl.zeros((EXT_M, BLOCK_N), dtype=tl.float32)
        acc_ue = tl.zeros((EXT_M, BLOCK_N), dtype=tl.float32)
    else:
        acc_ge = acc_g
        acc_ue = acc_u
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            g = tl.load(g_ptrs, mask=col_ok[None, :], other=0.0)
            if EXT_M > 0:
                a_e = tl.load(e_ptrs, mask=row_ok_e[:, None], other=0.0)
        else:
            k_ok = ks < H - k0
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if EXT_M > 0:
                a_e = tl.load(e_ptrs, mask=row_ok_e[:, None] & k_ok[None, :], other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION)
        if EXT_M > 0:
            acc_ge = tl.dot(a_e, g, acc_ge, input_precision=PRECISION)
        if WITH_UP:
            if EVEN_K:
                u = tl.load(u_ptrs, mask=col_ok[None, :], other=0.0)
            else:
                u = tl.load(u_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION)
            if EXT_M > 0:
                acc_ue = tl.dot(a_e, u, acc_ue, input_precision=PRECISION)
            u_ptrs += BLOCK_K * stride_wh
        a_ptrs += BLOCK_K * stride_xh
        if EXT_M > 0:
            e_ptrs += BLOCK_K * stride_xh
        g_ptrs += BLOCK_K * stride_wh
    return acc_g, acc_u, acc_ge, acc_ue


def order_blocks(cfg: dict, align) -> int:
    """A GEMM config's tile order as its kernels take it (`tile_of`'s ORDER_BLOCKS): 0 for `grouped_pid` over all
    blocks, else with `EXPERT_ORDER` the power of two that covers the alignment's blocks, at least 256 (fewer
    compiled variants across token counts; the ids are 1 KB)."""
    if not cfg.get("EXPERT_ORDER"):
        return 0
    return max(256, next_power_of_2(align.max_blocks))


def dot_precision(dtype) -> str:
    """IEEE: fp32 inputs are multiplied in fp32 (callers of the fp32 path asked for fp32, not tf32); for
    fp16/bf16 it changes nothing, and it is the one choice every backend accepts (gfx90a rejects "tf32")."""
    return "ieee"
