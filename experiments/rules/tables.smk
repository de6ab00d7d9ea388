# Tables stage (CPU): generated TeX (tables, macros, figure environments), each beside the
# <name>.trace.json that records where every number in it came from; and the claims check.


rule tab_headline:
    input:
        settings=SETTINGS,
        latency=latency_inputs(LATENCY_DEVICES),
        script="experiments/analysis/tab_headline.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/headline.tex",
        trace=f"{GEN}/headline.trace.json",
    log:
        f"{LOGS}/tab_headline.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tab_headline --latency {input.latency} --settings {input.settings} "
        "--out {output.tex}"
        + LOGGED


rule tab_ceiling:
    input:
        settings=SETTINGS,
        latency=latency_inputs(CEILING_DEVICES),
        ceiling=ceiling_inputs(),
        script="experiments/analysis/tab_ceiling.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/ceiling.tex",
        trace=f"{GEN}/ceiling.trace.json",
    log:
        f"{LOGS}/tab_ceiling.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tab_ceiling --latency {input.latency} --ceiling {input.ceiling} "
        "--settings {input.settings} --out {output.tex}"
        + LOGGED


rule tab_heldout:
    input:
        settings=SETTINGS,
        heldout=heldout_inputs(),
        models="config/heldout_models.yaml",
        script="experiments/analysis/tab_heldout.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/heldout.tex",
        trace=f"{GEN}/heldout.trace.json",
    log:
        f"{LOGS}/tab_heldout.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tab_heldout --heldout {input.heldout} --settings {input.settings} "
        "--out {output.tex}"
        + LOGGED


rule tab_compile:
    input:
        settings=SETTINGS,
        build=build_inputs(),
        script="experiments/analysis/tab_compile.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/compile.tex",
        trace=f"{GEN}/compile.trace.json",
    log:
        f"{LOGS}/tab_compile.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tab_compile --build {input.build} --settings {input.settings} "
        "--out {output.tex}"
        + LOGGED


rule tex_setup:
    input:
        settings=SETTINGS,
        provenance=provenance_inputs(),
        correctness=correctness_inputs(),
        models="config/models.yaml",
        script="experiments/analysis/tex_setup.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/setup.tex",
        trace=f"{GEN}/setup.trace.json",
    params:
        devices=DEVICES,
    log:
        f"{LOGS}/tex_setup.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tex_setup --devices {params.devices} --correctness {input.correctness} "
        "--settings {input.settings} --out {output.tex}"
        + LOGGED


rule claims_check:
    input:
        settings=SETTINGS,
        claims="config/claims.yaml",
        latency=latency_inputs(LATENCY_DEVICES),
        ncu=ncu_inputs(),
        model=[f"{DATA}/traffic_model.csv"] if TRAFFIC_MODEL else [],
        interpreter=interpreter_inputs(),
        build=build_inputs(),
        script="experiments/analysis/claims_check.py",
        lib=ANALYSIS_LIB + ["experiments/analysis/claims.py"],
    output:
        tex=f"{GEN}/claims.tex",
        trace=f"{GEN}/claims.trace.json",
        json=f"{GEN}/claims.json",
        md=f"{GEN}/claims.md",
    params:
        devices=DEVICES,
    log:
        f"{LOGS}/claims_check.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.claims_check --claims {input.claims} --devices {params.devices} "
        "--latency {input.latency} --ncu {input.ncu} --model {input.model} --interpreter {input.interpreter} "
        "--build {input.build} --settings {input.settings} --out {output.tex} --json {output.json} "
        "--markdown {output.md}"
        + LOGGED


rule tex_figures:
    input:
        settings=SETTINGS,
        figures=expand(f"{FIG}/{{figure}}.pdf", figure=FIGURES),
        script="experiments/analysis/tex_figures.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/figures.tex",
        trace=f"{GEN}/figures.trace.json",

    log:
        f"{LOGS}/tex_figures.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tex_figures --figures {input.figures} "
        "--settings {input.settings} --out {output.tex}"
        + LOGGED


# The README's claims section, from the same generated table (README.md is edited in place).
rule readme_claims:
    input:
        md=f"{GEN}/claims.md",
        script="experiments/analysis/readme_claims.py",
    output:
        done=f"{GEN}/readme_claims.done",
    log:
        f"{LOGS}/readme_claims.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.readme_claims --claims {input.md} --readme README.md --done {output.done}"
        + LOGGED


# The fusion's saving (analytic model), and ncu against the model and the floor, per measured device.
rule tab_traffic:
    input:
        settings=SETTINGS,
        claims="config/claims.yaml",
        model=[f"{DATA}/traffic_model.csv"] if TRAFFIC_MODEL else [],
        ncu=ncu_inputs(),
        script="experiments/analysis/tab_traffic.py",
        lib=ANALYSIS_LIB,
    output:
        tex=f"{GEN}/traffic.tex",
        trace=f"{GEN}/traffic.trace.json",
    log:
        f"{LOGS}/tab_traffic.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.tab_traffic --model {input.model} --ncu {input.ncu} "
        "--settings {input.settings} --out {output.tex}"
        + LOGGED
