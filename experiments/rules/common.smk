# Paths, the devices found under results/raw/ and what each holds; read once when the workflow starts.
# Raw files are checked here (raw.py) so that bad data stops the run before any job, naming file and row.
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)

from experiments.analysis.latency_rows import shown_rows, timed_rows  # noqa: E402
from experiments.analysis.raw import (  # noqa: E402
    RawDataError,
    device_folders,
    read_ceiling,
    read_heldout,
    read_latency,
    read_provenance,
    read_traffic,
)

RAW = config["raw_dir"]
# The quick subset (aot_small) goes to a scratch folder: it must never replace the committed full build.
BUILD = "build/aot_small" if config["aot_small"] else config["build_dir"]
GEN = "paper/generated"
DATA = f"{GEN}/data"
LOGS = f"{GEN}/logs"
FIG = "paper/figures"
PAPER_PDF = "paper/build/tritonmoe.pdf"
REPO = "." if config["check_git_sha"] else None
# The effective config the scripts read (rule `settings`); `measure` only selects GPU jobs.
SETTINGS = f"{GEN}/settings.json"
# Appended to each job's command: its output goes to its log, and on failure the log's end is shown.
LOGGED = " > {log} 2>&1 || (tail -n 25 {log} >&2; exit 1)"
ANALYSIS_LIB = [f"experiments/analysis/{name}.py" for name in
                ("raw", "schema", "sources", "derive", "trace", "settings", "atomic", "plotting")]
KERNEL_SOURCES = sorted(str(p) for p in Path("kernels/tritonmoe").glob("*.py"))
# The tuned tables: each AOT target builds the launches of its device's tables (experiments/aot/layer_config.py).
TUNED_TABLES = sorted(str(p) for p in Path("kernels/tritonmoe/configs").glob("*/*.json"))


# The GPU stage (measure.smk): the device this machine measures, and this run's start time.
MEASURE = config["measure"]
if MEASURE and MEASURE not in config["devices"]:
    raise WorkflowError(f"measure: expected one of {', '.join(config['devices'])}, got {MEASURE!r}")
STAMP = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _read_raw():
    """Devices with data, and their checked latency, traffic and dense-reference frames."""
    devices = device_folders(RAW, list(config["devices"]))
    # A measuring run may have no .git (a copy on a GPU machine) and reads no results; the
    # analysis scripts check git_sha again whatever the run.
    repo = None if MEASURE else REPO
    latency, traffic, ceiling, heldout = {}, {}, {}, {}
    for device in devices:
        read_provenance(f"{RAW}/{device}", repo=repo)
        if Path(f"{RAW}/{device}/latency.csv").exists():
            latency[device] = read_latency(f"{RAW}/{device}/latency.csv", device=device, repo=repo)
        if Path(f"{RAW}/{device}/traffic.csv").exists():
            traffic[device] = read_traffic(f"{RAW}/{device}/traffic.csv", device=device, repo=repo)
        if Path(f"{RAW}/{device}/ceiling.csv").exists():
            ceiling[device] = read_ceiling(f"{RAW}/{device}/ceiling.csv", device=device, repo=repo)
        if Path(f"{RAW}/{device}/heldout.csv").exists():
            heldout[device] = read_heldout(f"{RAW}/{device}/heldout.csv", device=device, repo=repo)
    return devices, latency, traffic, ceiling, heldout


try:
    DEVICES, LATENCY, TRAFFIC, CEILING, HELDOUT = _read_raw()
except RawDataError as e:
    raise WorkflowError(f"raw results do not match the contract: {e}") from None


LATENCY_DEVICES = [d for d in DEVICES if d in LATENCY and len(timed_rows(LATENCY[d], config))]
SPEEDUP_DEVICES = [
    d
    for d in LATENCY_DEVICES
    if config["baseline_impl"] in set(shown_rows(LATENCY[d], config, config["compare_graph"])["impl"])
]
NCU_DEVICES = [d for d in DEVICES if d in TRAFFIC and (TRAFFIC[d]["tool"] == "ncu").any()]


def raw_file(device, name):
    return f"{RAW}/{device}/{name}"


def latency_inputs(devices):
    return [raw_file(d, "latency.csv") for d in devices]


# Devices with timed rows and a dense reference (ceiling.csv): the ceiling table reads only theirs.
CEILING_DEVICES = [d for d in LATENCY_DEVICES if d in CEILING]


def ceiling_inputs():
    return [raw_file(d, "ceiling.csv") for d in CEILING_DEVICES]


# Devices with configs measured on shapes without a table (heldout.csv, experiments/bench/heldout.py).
HELDOUT_DEVICES = [d for d in DEVICES if d in HELDOUT]


def heldout_inputs():
    return [raw_file(d, "heldout.csv") for d in HELDOUT_DEVICES]


def provenance_inputs():
    return [raw_file(d, "provenance.json") for d in DEVICES]


def ncu_inputs():
    return [raw_file(d, "traffic.csv") for d in NCU_DEVICES]


def interpreter_inputs():
    return [f"{DATA}/traffic_interpreter.csv"] if config["interpreter"] else []


def correctness_inputs():
    return [f"{DATA}/interp_correctness.csv"] if config["interpreter"] else []


# The analytic traffic model lives in the package (kernels/tritonmoe/traffic.py).
TRAFFIC_MODEL = Path("kernels/tritonmoe/traffic.py").exists()


def build_inputs():
    return [BUILD] if config["aot"] else []


def measure_targets(kinds):
    """An input function: the GPU jobs of `kinds` for the device named by --config measure=<device>."""

    def targets(wildcards):
        if not MEASURE:
            raise WorkflowError("measure: name the device to measure, e.g. --config measure=h100-sxm")
        return [f"results/logs/{MEASURE}/{kind}-{STAMP}.done" for kind in kinds]

    return targets
