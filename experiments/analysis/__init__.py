"""From raw results to the paper: loading and validating raw results, derived numbers that trace to
their raw rows, figures, tables and the claims check. Each `fig_*`, `tab_*` and `tex_*` module is one
script of the Snakemake workflow (run as `python -m experiments.analysis.<name>`); the others are the
small library they share. Nothing here measures anything: measurements live in `experiments/bench`
and `experiments/traffic`, and only real runs write `results/raw/`.
"""
