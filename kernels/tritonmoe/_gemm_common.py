"""Pieces shared by the grouped-GEMM kernels: program ordering, an aligned block's extent and rows, the
gate/up accumulation from one load of x, and the dot precision."""
import triton
import triton.language as tl


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
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xt + ks[None, :] * stride_xh
    w_base = w_ptr + expert * stride_we + ks[:, None] * stride_wh
    g_ptrs = w_base + (gate_row0 + cols)[None, :].to(tl.int64) * stride_wn
    u_ptrs = w_base + (up_row0 + cols)[None, :].to(tl.int64) * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            g = tl.load(g_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = ks < H - k0
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION)
        if WITH_UP:
            if EVEN_K:
                u = tl.load(u_ptrs, mask=col_ok[None, :], other=0.0)
            else:
                u = tl.load(u_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION)
            u_ptrs += BLOCK_K * stride_wh
        a_ptrs += BLOCK_K * stride_xh
        g_ptrs += BLOCK_K * stride_wh
    return acc_g, acc_u


def dot_precision(dtype) -> str:
    """IEEE: fp32 inputs are multiplied in fp32 (callers of the fp32 path asked for fp32, not tf32); for
    fp16/bf16 it changes nothing, and it is the one choice every backend accepts (gfx90a rejects "tf32")."""
    return "ieee"
