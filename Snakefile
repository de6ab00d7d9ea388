# TritonMoE: raw results -> figures, tables, the claims check and the paper.
#
#   snakemake --cores 1 all                                   # CPU only: everything from results/raw
#   snakemake --cores 1 measure --config measure=h100-sxm     # on a GPU: re-measure this device, then `all`
#   snakemake --cores 1 tune --config measure=h100-sxm        # on a GPU: tune its launch configs first
#   snakemake -n all                                          # the plan
#
# Rules by stage: experiments/rules/{build,measure,analyse,figures,tables,paper}.smk. Settings:
# config/config.yaml (checked against config/config.schema.yaml). Devices shown are those with a
# folder under results/raw/; the others are named in the paper as not measured.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


validate(config, "config/config.schema.yaml")


include: "experiments/rules/common.smk"
include: "experiments/rules/build.smk"
include: "experiments/rules/measure.smk"
include: "experiments/rules/analyse.smk"
include: "experiments/rules/figures.smk"
include: "experiments/rules/tables.smk"
include: "experiments/rules/paper.smk"


localrules:
    all,
    generated,
    settings,
    measure,
    tune,


rule all:
    default_target: True
    input:
        PAPER_PDF,
        GENERATED,
        f"{GEN}/readme_claims.done",


# Everything but the PDF (no TeX needed): figures, generated TeX checked by check_tracing, claims.
rule generated:
    input:
        GENERATED,
