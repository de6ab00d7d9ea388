"""Pieces shared by the grouped-GEMM kernels: program ordering and the dot precision."""
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


def dot_precision(dtype) -> str:
    """IEEE: fp32 inputs are multiplied in fp32 (callers of the fp32 path asked for fp32, not tf32); for
    fp16/bf16 it changes nothing, and it is the one choice every backend accepts (gfx90a rejects "tf32")."""
    return "ieee"
