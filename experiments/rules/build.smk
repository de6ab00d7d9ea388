# Build stage (CPU): ahead-of-time compilation of the Triton kernels for every target GPU.


rule aot_build:
    input:
        script="experiments/aot/build_all.py",
        helpers=[f"experiments/aot/{f}.py" for f in ("compile_kernel", "launches", "layer_config", "targets")],
        targets="config/aot_targets.yaml",
        kernels=KERNEL_SOURCES,
        tables=TUNED_TABLES,
    output:
        directory(BUILD),
    params:
        small="--small" if config["aot_small"] else "",
    log:
        f"{LOGS}/aot_build.log",
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --out {output} {params.small}"
        + LOGGED
