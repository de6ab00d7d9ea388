# Measure stage (GPU): re-measures one device, only when asked:
#
#   snakemake --cores 1 measure --config measure=h100-sxm
#
# then `snakemake --cores 1 all` redraws everything. `tune` (same flag) first tunes the launch
# configs of this GPU (kernels/tritonmoe/configs/<device>/, to commit before measuring). The scripts write results/raw/<device>/
# themselves (atomically); the raw files are not outputs of these rules, so `all` never schedules
# a GPU job. Each run leaves a log under results/logs/<device>/ named by its start time, which also
# makes every `measure` request run anew. On a cluster: --workflow-profile config/slurm.
# The commit that made the rows: $GIT_SHA when set (e.g. a copy without .git), else the checkout's HEAD.
GIT_ARGS = (
    '--git-sha "${GIT_SHA:-$(git rev-parse HEAD)}" '
    '--git-dirty "${GIT_DIRTY:-$(git diff --quiet HEAD -- . && echo 0 || echo 1)}"'
)
NEEDS_GPU = (
    "python -c \"import sys, torch; sys.exit(0 if torch.cuda.is_available() else "
    "'measure: no GPU on this machine; the measure rules need a CUDA or ROCm GPU')\""
)


# The sweep in two GPU jobs of under ten minutes each, one per routing (~6 min each on an H100).
# GPU jobs run one after another (chained by their inputs: uniform sweep -> zipf sweep -> ncu), so that no
# two time or profile the same GPU at once and no two merge rows into latency.csv at once, whatever --cores says.
LATENCY_AFTER = {"uniform": [], "zipf": ["results/logs/{device}/latency-uniform-{stamp}.done"]}


rule measure_latency:
    input:
        script="experiments/bench/latency.py",
        after=lambda wildcards: [p.format(**wildcards) for p in LATENCY_AFTER[wildcards.routing]],
    output:
        touch("results/logs/{device}/latency-{routing}-{stamp}.done"),
    wildcard_constraints:
        routing="uniform|zipf",
    params:
        device_dir=lambda wildcards: f"{RAW}/{wildcards.device}",
        git=GIT_ARGS,
        needs_gpu=NEEDS_GPU,
    log:
        "results/logs/{device}/latency-{routing}-{stamp}.log",
    resources:
        gpu=1,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        "{params.needs_gpu} && python {input.script} --routings {wildcards.routing} --device-out {params.device_dir} "
        "{params.git} > {log} 2>&1"


rule measure_traffic:
    input:
        script="experiments/traffic/ncu_traffic.py",
        after="results/logs/{device}/latency-zipf-{stamp}.done",
    output:
        touch("results/logs/{device}/traffic-{stamp}.done"),
    params:
        device_dir=lambda wildcards: f"{RAW}/{wildcards.device}",
        git=GIT_ARGS,
        needs_gpu=NEEDS_GPU,
    log:
        "results/logs/{device}/traffic-{stamp}.log",
    resources:
        gpu=1,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        "{params.needs_gpu} && python {input.script} --out {params.device_dir} {params.git} > {log} 2>&1"


rule measure_ceiling:
    input:
        script="experiments/bench/ceiling.py",
        after="results/logs/{device}/traffic-{stamp}.done",
    output:
        touch("results/logs/{device}/ceiling-{stamp}.done"),
    params:
        device_dir=lambda wildcards: f"{RAW}/{wildcards.device}",
        git=GIT_ARGS,
        needs_gpu=NEEDS_GPU,
    log:
        "results/logs/{device}/ceiling-{stamp}.log",
    resources:
        gpu=1,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "{params.needs_gpu} && python {input.script} --device-out {params.device_dir} {params.git} > {log} 2>&1"


rule measure_heldout:
    input:
        script="experiments/bench/heldout.py",
        after="results/logs/{device}/ceiling-{stamp}.done",
    output:
        touch("results/logs/{device}/heldout-{stamp}.done"),
    params:
        device_dir=lambda wildcards: f"{RAW}/{wildcards.device}",
        git=GIT_ARGS,
        needs_gpu=NEEDS_GPU,
    log:
        "results/logs/{device}/heldout-{stamp}.log",
    resources:
        gpu=1,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "{params.needs_gpu} && python {input.script} --device-out {params.device_dir} {params.git} > {log} 2>&1"


rule tune_configs:
    input:
        script="experiments/bench/tune.py",
    output:
        touch("results/logs/{device}/tune-{stamp}.done"),
    params:
        needs_gpu=NEEDS_GPU,
    log:
        "results/logs/{device}/tune-{stamp}.log",
    resources:
        gpu=1,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        "{params.needs_gpu} && python {input.script} > {log} 2>&1"


rule measure:
    input:
        measure_targets(("latency-uniform", "latency-zipf", "traffic", "ceiling", "heldout")),


rule tune:
    input:
        measure_targets(("tune",)),
