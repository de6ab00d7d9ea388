# Analyse stage (CPU): the analytic traffic model, and the kernels run in Triton's interpreter on
# small shapes (byte counts per stage; correctness against the float64 reference). And the
# effective config, which every script reads.


rule settings:
    output:
        SETTINGS,
    params:
        config={k: v for k, v in config.items() if k != "measure"},
    log:
        f"{LOGS}/settings.log",
    run:
        Path(output[0]).write_text(json.dumps(params.config, indent=1, sort_keys=True) + "\n")


rule traffic_model:
    input:
        settings=SETTINGS,
        script="experiments/analysis/traffic_model.py",
        model="kernels/tritonmoe/traffic.py",
        models="config/models.yaml",
    output:
        f"{DATA}/traffic_model.csv",
    log:
        f"{LOGS}/traffic_model.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.traffic_model --settings {input.settings} --out {output}"
        + LOGGED


rule interpreter_traffic:
    input:
        script="experiments/traffic/interp_count.py",
        kernels=KERNEL_SOURCES,
    output:
        f"{DATA}/traffic_interpreter.csv",
    log:
        f"{LOGS}/interpreter_traffic.log",
    conda:
        "../../environment.yml"
    shell:
        "TRITON_INTERPRET=1 python {input.script} --out {output}"
        + LOGGED


rule interpreter_correctness:
    input:
        script="experiments/analysis/interp_correctness.py",
        kernels=KERNEL_SOURCES,
    output:
        f"{DATA}/interp_correctness.csv",
    log:
        f"{LOGS}/interpreter_correctness.log",
    conda:
        "../../environment.yml"
    shell:
        "TRITON_INTERPRET=1 python -m experiments.analysis.interp_correctness --out {output}"
        + LOGGED
