# Paper stage: every number of the generated TeX is recomputed from its rows (check_tracing), then
# latexmk builds paper/build/tritonmoe.pdf.

GENERATED_TEX = [f"{GEN}/{name}.tex" for name in ("headline", "compile", "setup", "claims", "figures")]
PAPER_SOURCES = sorted(str(p) for p in Path("paper").glob("*.tex")) + sorted(
    str(p) for p in Path("paper/sections").glob("*.tex")
)


rule check_tracing:
    input:
        tex=GENERATED_TEX,
        traces=[t.removesuffix(".tex") + ".trace.json" for t in GENERATED_TEX],
        paper=PAPER_SOURCES,
        script="experiments/analysis/check_tracing.py",
        lib=ANALYSIS_LIB,
    output:
        f"{GEN}/tracing_report.txt",
    params:
        settings=SETTINGS,
    log:
        f"{LOGS}/check_tracing.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m experiments.analysis.check_tracing --generated {GEN} --paper paper "
        "--settings {params.settings} --out {output} > {log} 2>&1 || (cat {log} >&2; exit 1)"


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
