# Measure stage (GPU): re-measures one device, only when asked:
#
#   snakemake --cores 1 --config measure=h100-sxm measure
#
# then `snakemake --cores 1 all` redraws everything. The scripts write results/raw/<device>/
# themselves (atomically); the raw files are not outputs of these rules, so `all` never schedules
# a GPU job. Each run leaves a log under results/logs/<device>/ named by its start time, which also
# makes every `measure` request run anew. On a cluster: --workflow-profile config/slurm.
from datetime import datetime, timezone

MEASURE = config["measure"]
if MEASURE and MEASURE not in config["devices"]:
    raise WorkflowError(f"measure: expected one of {', '.join(config['devices'])}, got {MEASURE!r}")
STAMP = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
# The commit that made the rows: $GIT_SHA when set (e.g. a copy without .git), else the checkout's HEAD.
GIT_ARGS = ('--git-sha "${{GIT_SHA:-$(git rev-parse HEAD)}}" '
            '--git-dirty "${{GIT_DIRTY:-$(git diff --quiet HEAD -- . && echo 0 || echo 1)}}"')
NO_GPU = ("python -c \"import sys, torch; sys.exit(0 if torch.cuda.is_available() else "
          "'measure: no GPU on this machine; the measure rules need a CUDA or ROCm GPU')\"")


rule measure_latency:
    input:
        script="experiments/bench/latency.py",
    output:
        log="results/logs/{device}/latency-{stamp}.log",
    resources:
        gpu=1,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        NO_GPU + " && python {input.script} --device-out " + RAW + "/{wildcards.device} " + GIT_ARGS
        + " > {output.log} 2>&1"


rule measure_traffic:
    input:
        script="experiments/traffic/ncu_traffic.py",
    output:
        log="results/logs/{device}/traffic-{stamp}.log",
    resources:
        gpu=1,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        NO_GPU + " && python {input.script} --out " + RAW + "/{wildcards.device} " + GIT_ARGS
        + " > {output.log} 2>&1"


rule measure:
    input:
        [f"results/logs/{MEASURE}/latency-{STAMP}.log", f"results/logs/{MEASURE}/traffic-{STAMP}.log"]
        if MEASURE
        else [],
    run:
        if not MEASURE:
            raise WorkflowError("measure: name the device to measure, e.g. --config measure=h100-sxm")
