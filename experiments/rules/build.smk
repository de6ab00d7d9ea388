# Build stage (CPU): ahead-of-time compilation of the Triton kernels for every target GPU.


rule aot_build:
    input:
        script="experiments/aot/build_all.py",
        kernels=KERNEL_SOURCES,
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
