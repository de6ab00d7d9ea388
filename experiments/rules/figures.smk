# Figures stage (CPU): one job per figure and format (PDF for the paper, PNG for the README), so a
# deleted file is redrawn alone. Only devices with data get figures.

FIGURES = (
    [f"latency_{d}" for d in LATENCY_DEVICES]
    + [f"speedup_{d}" for d in SPEEDUP_DEVICES]
    + [f"floor_fraction_{d}" for d in LATENCY_DEVICES]
    + (["traffic_stages", "traffic_saved"] if TRAFFIC_MODEL else [])
    + (["compile"] if config["aot"] else [])
)


wildcard_constraints:
    device="[a-z0-9-]+",
    ext="pdf|png",


rule fig_latency:
    input:
        settings=SETTINGS,
        latency=raw_file("{device}", "latency.csv"),
        script="experiments/analysis/fig_latency.py",
        lib=ANALYSIS_LIB,
    output:
        f"{FIG}/latency_{{device}}.{{ext}}",
    log:
        f"{LOGS}/fig_latency_{{device}}.{{ext}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.fig_latency --latency {input.latency} --settings {input.settings} "
        "--out {output}"
        + LOGGED


rule fig_speedup:
    input:
        settings=SETTINGS,
        latency=raw_file("{device}", "latency.csv"),
        script="experiments/analysis/fig_speedup.py",
        lib=ANALYSIS_LIB,
    output:
        f"{FIG}/{{metric}}_{{device}}.{{ext}}",
    wildcard_constraints:
        metric="speedup|floor_fraction",
    log:
        f"{LOGS}/fig_{{metric}}_{{device}}.{{ext}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.fig_speedup --metric {wildcards.metric} --latency {input.latency} "
        "--settings {input.settings} --out {output}"
        + LOGGED


rule fig_traffic:
    input:
        settings=SETTINGS,
        model=f"{DATA}/traffic_model.csv",
        interpreter=interpreter_inputs(),
        ncu=ncu_inputs(),
        script="experiments/analysis/fig_traffic.py",
        lib=ANALYSIS_LIB,
    output:
        f"{FIG}/traffic_{{view}}.{{ext}}",
    wildcard_constraints:
        view="stages|saved",
    log:
        f"{LOGS}/fig_traffic_{{view}}.{{ext}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.fig_traffic --view {wildcards.view} --model {input.model} "
        "--interpreter {input.interpreter} --ncu {input.ncu} --settings {input.settings} --out {output}"
        + LOGGED


rule fig_compile:
    input:
        settings=SETTINGS,
        build=BUILD,
        script="experiments/analysis/fig_compile.py",
        lib=ANALYSIS_LIB,
    output:
        f"{FIG}/compile.{{ext}}",
    log:
        f"{LOGS}/fig_compile.{{ext}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.fig_compile --build {input.build} --settings {input.settings} "
        "--out {output}"
        + LOGGED
