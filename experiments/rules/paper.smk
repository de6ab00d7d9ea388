# Paper stage: every number of the generated TeX is recomputed from its rows (check_tracing), then
# latexmk builds paper/build/tritonmoe.pdf.

GENERATED_TEX = [f"{GEN}/{name}.tex" for name in ("headline", "ceiling", "heldout", "compile", "setup", "claims",
                                                            "figures", "traffic")]
PAPER_SOURCES = sorted(str(p) for p in Path("paper").glob("*.tex")) + sorted(
    str(p) for p in Path("paper/sections").glob("*.tex")
)


rule check_tracing:
    input:
        settings=SETTINGS,
        tex=GENERATED_TEX,
        traces=[t.removesuffix(".tex") + ".trace.json" for t in GENERATED_TEX],
        paper=PAPER_SOURCES,
        script="experiments/analysis/check_tracing.py",
        lib=ANALYSIS_LIB,
    output:
        f"{GEN}/tracing_report.txt",
    params:
        generated=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{LOGS}/check_tracing.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.check_tracing --generated {params.generated} --paper paper "
        "--settings {input.settings} --out {output}"
        + LOGGED


rule paper:
    input:
        sources=PAPER_SOURCES,
        bib="paper/references.bib",
        generated=GENERATED_TEX,
        figures=expand(f"{FIG}/{{figure}}.pdf", figure=FIGURES),
        tracing=f"{GEN}/tracing_report.txt",
        script="experiments/analysis/build_paper.py",
    output:
        PAPER_PDF,
    log:
        f"{LOGS}/paper.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.build_paper --main paper/tritonmoe.tex --out {output} --log {log}"

# Every product but the PDF, listed so that a deleted one is a missing target and gets remade
# (Snakemake does not remake a deleted intermediate file whose dependants are up to date).
GENERATED = (
    expand(f"{FIG}/{{figure}}.{{ext}}", figure=FIGURES, ext=["pdf", "png"])
    + GENERATED_TEX
    + [t.removesuffix(".tex") + ".trace.json" for t in GENERATED_TEX]
    + [f"{GEN}/tracing_report.txt", f"{GEN}/claims.json", f"{GEN}/claims.md", SETTINGS]
    + ([f"{DATA}/traffic_model.csv"] if TRAFFIC_MODEL else [])
    + interpreter_inputs()
    + correctness_inputs()
    + build_inputs()
)
