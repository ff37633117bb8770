#!/usr/bin/env bash
# One-lease GPU check of the TESLA paper's memory/time tables (Table 4 and Table 5), under 6 minutes
# on an H200.
#
# STATUS: no GPU run has been made yet. This script was written in a session without a GPU; only its
# CPU smoke mode (GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1) has run end to end. The first GPU session
# runs it unchanged and commits what it writes under reports/profile-gpu/.
#
# What it runs (every profile point in a fresh process, random stand-in data and an on-disk stand-in
# expert store of the dataset's shape; memory and time do not depend on pixel values):
#   Table 4: CIFAR-100 shape (3x32x32, 100 classes, ConvNet-3), batch 100, ipc 50,
#            steps 1, 10, 25, 50 for mtt / tesla / tesla-exact;
#   Table 5: 50 steps, batch 100, for the CIFAR-100 shape (Table 4's 50-step points) and the
#            ImageNet-64 shape (ConvNet-4, 1000 classes, ipc 2, soft labels for tesla as its card says);
#   3 measured iterations after 1 warm-up per point: torch peaks (max_memory_allocated/reserved),
#   NVML peaks of the device and the process, CUDA-synchronised step times (the profiler's own);
#   tesla-exact at 50 steps with the host and checkpoint snapshot policies, if time is left;
#   a torch.profiler summary of one tesla iteration (CIFAR-100 shape, 50 steps): top 15 kernels by time.
# Everything goes to "$OUT" (default reports/profile-gpu): at most 8 files, no sub-folders:
#   table4.csv table4.md table5.csv table5.md policies.csv tesla-trace-top15.txt summary.md log.txt
#
# Needs: python3 with torch (CUDA), nvidia-ml-py, pandas, matplotlib, click, tqdm, safetensors, numpy
# (the GPU machine has them). kornia is not there: put its wheels in the git-ignored folder .whl/ first
# (on a machine with the package registry: `bash benchmarks/fetch_gpu_wheels.sh`); they are installed
# with `pip install --no-deps --target` into a temporary site on PYTHONPATH. The profile itself does not
# import kornia, so missing wheels only give a warning. The project is installed with
# `pip install --no-deps -e .`; if that cannot build offline, the script puts the source tree on
# PYTHONPATH with the package's entry points instead.
#
# Usage (repository root):   bash benchmarks/gpu_check.sh
#   CPU smoke test:          GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
#   (digits shape for Table 4 and a CIFAR-10-shaped second Table 5 row at 2 steps; about 5 minutes on a
#   2-core CPU, mostly each point's process start; ImageNet-64 with soft labels is too slow on a CPU.)
# Time on an H200 (an estimate, not measured): 15 profile points of a few seconds of compute each, plus
# about 5-10 s of process start per point; the two snapshot-policy points run only while under
# GPU_CHECK_BUDGET_S (330 s) so the script stays within 6 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-reports/profile-gpu}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-330}   # stop starting optional parts after this many seconds
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
rm -f "$OUT"/table4.csv "$OUT"/table4.md "$OUT"/table5.csv "$OUT"/table5.md "$OUT"/policies.csv \
    "$OUT"/tesla-trace-top15.txt "$OUT"/summary.md "$OUT"/log.txt
exec > >(tee "$OUT/log.txt") 2>&1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
echo "gpu_check: device=$DEVICE tiny=$TINY out=$OUT python=$($PY -c 'import sys; print(sys.version.split()[0])')"

# -- environment ------------------------------------------------------------------------------
SITE="$WORK/site"
mkdir -p "$SITE"
if ls .whl/kornia-*.whl >/dev/null 2>&1 && ls .whl/kornia_rs-*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-deps --no-index --target "$SITE" .whl/kornia-*.whl .whl/kornia_rs-*.whl \
        || echo "warning: the kornia wheels did not install (they are built for Python 3.12); continuing without kornia"
else
    echo "warning: no kornia / kornia_rs wheels in .whl/ (bash benchmarks/fetch_gpu_wheels.sh); the profile runs without kornia"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import dcbench_tesla_methods" >/dev/null 2>&1; then
    if ! $PY -m pip install --quiet --no-deps --no-build-isolation -e . ; then
        echo "warning: 'pip install --no-deps -e .' failed; using the source tree with its entry points"
        ln -s "$PWD/methods" "$SITE/dcbench_tesla_methods"
        mkdir -p "$SITE/dcbench_tesla-0.0.0.dist-info"
        printf 'Metadata-Version: 2.1\nName: dcbench-tesla\nVersion: 0.0.0\n' > "$SITE/dcbench_tesla-0.0.0.dist-info/METADATA"
        $PY - "$SITE/dcbench_tesla-0.0.0.dist-info/entry_points.txt" <<'EOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
with open(sys.argv[1], "w") as out:
    for group, body in (("console_scripts", cfg["options.entry_points"]["console_scripts"]),
                        ("dcbench_tesla.methods", cfg["options.entry_points"]["dcbench_tesla.methods"])):
        out.write(f"[{group}]\n" + "\n".join(line.strip() for line in body.strip().splitlines()) + "\n\n")
EOF
        export PYTHONPATH="$PWD:$PYTHONPATH"
    fi
fi
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
EOF
echo "setup done at $(elapsed) s"

# -- settings ---------------------------------------------------------------------------------
if [ "$TINY" = "1" ]; then   # CPU smoke test: digits and CIFAR-10 shapes, tiny batches (proves the pipeline only)
    T4_DATASET=digits; T4_STEPS=1,2; T4_BATCH=10; T4_IPC=2; T5_STEPS=2
    T5_DATASET=cifar10; T5_BATCH=2; T5_IPC=1; POINT_TIMEOUT=300; BUDGET_S=100000
else
    T4_DATASET=cifar100; T4_STEPS=1,10,25,50; T4_BATCH=100; T4_IPC=50; T5_STEPS=50
    T5_DATASET=imagenet64; T5_BATCH=100; T5_IPC=2; POINT_TIMEOUT=120
fi
COMMON=(--methods mtt,tesla,tesla-exact --iterations 3 --warmup 1 --device "$DEVICE" --overwrite --timeout "$POINT_TIMEOUT")

# -- Table 4: memory and time vs steps --------------------------------------------------------
$PY -m dcbench_tesla profile "${COMMON[@]}" --dataset "$T4_DATASET" --steps "$T4_STEPS" \
    --batch-syn "$T4_BATCH" --ipc "$T4_IPC" --table-steps "$T5_STEPS" --output "$WORK/table4" || echo "warning: Table 4 sweep exited $?"
cp "$WORK/table4/profile.csv" "$OUT/table4.csv" || echo "warning: no Table 4 CSV"
cp "$WORK/table4/profile.md" "$OUT/table4.md" || echo "warning: no Table 4 report"
echo "Table 4 done at $(elapsed) s"

# -- Table 5: the ImageNet-64 shape at T5_STEPS steps (the CIFAR-100 row is Table 4's) ---------------
$PY -m dcbench_tesla profile "${COMMON[@]}" --dataset "$T5_DATASET" --steps "$T5_STEPS" \
    --batch-syn "$T5_BATCH" --ipc "$T5_IPC" --table-steps "$T5_STEPS" --output "$WORK/table5-imagenet" || echo "warning: Table 5 sweep exited $?"
$PY - "$WORK/table4/profile.csv" "$WORK/table5-imagenet/profile.csv" "$T5_STEPS" "$OUT/table5.csv" <<'EOF' || true
import sys
import pandas as pd
t4, t5, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
frames = []
for path, query in ((t4, f"steps == {steps}"), (t5, None)):
    try:
        frame = pd.read_csv(path)
        frames.append(frame.query(query) if query else frame)
    except FileNotFoundError:
        print(f"warning: no results in {path}")
if frames:
    pd.concat(frames, ignore_index=True).to_csv(out, index=False)
EOF
$PY -m dcbench_tesla plot --csv "$OUT/table5.csv" --output "$WORK/table5-plot" --table-steps "$T5_STEPS" >/dev/null \
    && cp "$WORK/table5-plot/profile.md" "$OUT/table5.md" || echo "warning: no Table 5 report"
echo "Table 5 done at $(elapsed) s"

# -- tesla-exact snapshot policies (optional, if time is left) -------------------------------------
if [ "$(elapsed)" -lt "$BUDGET_S" ]; then
    $PY - "$WORK" "$OUT/policies.csv" "$DEVICE" "$T4_DATASET" "$T5_STEPS" "$T4_BATCH" "$T4_IPC" "$POINT_TIMEOUT" <<'EOF'
import json, subprocess, sys
from pathlib import Path
import pandas as pd
work, out, device, dataset, steps, batch, ipc, timeout = sys.argv[1:]
rows = []
for policy in ("host", "checkpoint"):  # device: the Table 4 point
    spec = {"method": "tesla-exact", "dataset": dataset, "steps": int(steps), "batch_syn": int(batch), "ipc": int(ipc),
            "iterations": 3, "warmup": 1, "device": device, "options": {"snapshot_policy": policy}}
    spec_path, result_path = Path(work) / f"policy-{policy}.json", Path(work) / f"policy-{policy}-result.json"
    spec_path.write_text(json.dumps(spec))
    try:
        subprocess.run([sys.executable, "-m", "dcbench_tesla.profiling.point", str(spec_path), str(result_path)],
                       timeout=float(timeout), check=False)
        record = json.loads(result_path.read_text())
    except (subprocess.TimeoutExpired, FileNotFoundError) as exc:
        record = {"status": "failed", "error": f"{type(exc).__name__}"}
    keep = ("status", "peak_alloc_mib", "peak_reserved_mib", "peak_device_mib", "peak_saved_tensors_mib",
            "snapshot_mib", "peak_rss_mib", "step_time_s", "engine_time_s", "error")
    rows.append({"policy": policy, **{k: record.get(k) for k in keep}})
pd.DataFrame(rows).to_csv(out, index=False)
print(pd.DataFrame(rows).drop(columns=["error"]).to_string(index=False))
EOF
    echo "policies done at $(elapsed) s"
else
    echo "skipping the snapshot-policy points: $(elapsed) s used"
fi

# -- torch.profiler: one tesla iteration, top 15 kernels by time -------------------------------------
$PY - "$DEVICE" "$T4_DATASET" "$T5_STEPS" "$T4_BATCH" "$T4_IPC" "$OUT/tesla-trace-top15.txt" <<'EOF' || echo "warning: trace failed"
import sys, tempfile
import torch
from torch.profiler import ProfilerActivity, profile
from dcbench_tesla.data import DATASETS
from dcbench_tesla.distiller import RunContext
from dcbench_tesla.method import make
from dcbench_tesla.profiling.standins import random_dataset, write_standin_experts

device, dataset, steps, batch, ipc, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
cuda = device.startswith("cuda")
distiller = make("tesla", RunContext(device=torch.device(device), progress=False, notice=lambda _m: None),
                 syn_steps=steps, batch_syn=batch, iterations=3)
with tempfile.TemporaryDirectory() as tmp:
    opts = distiller.options
    model = opts.model or DATASETS.get(dataset).default_model
    distiller.context.experts = write_standin_experts(tmp, model, dataset, epochs=opts.max_start_epoch + opts.expert_epochs)
    distiller.reset(random_dataset(dataset, ipc), ipc=ipc, seed=0)
    distiller.step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        distiller.step()
        if cuda:
            torch.cuda.synchronize()
key = "cuda_time_total" if cuda else "self_cpu_time_total"
table = prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=70)
header = f"one tesla iteration: {dataset} shape, {steps} steps, batch {batch}, ipc {ipc}, device {device}; sorted by {key}\n"
open(out, "w").write(header + table + "\n")
print(header + table)
EOF
echo "trace done at $(elapsed) s"

# -- summary: the paper's ratios beside ours ---------------------------------------------------------
$PY - "$OUT" "$T5_STEPS" "$(elapsed)" "$DEVICE" "$TINY" "$T4_DATASET" "$T5_DATASET" <<'EOF' || echo "warning: no summary"
import sys
from pathlib import Path
import pandas as pd
import torch
out, steps, elapsed, device, tiny = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
datasets = sys.argv[6:8]
cuda = device.startswith("cuda") and torch.cuda.is_available()
mem = "peak_alloc_mib" if cuda else "peak_saved_plus_snapshots_mib"
name = torch.cuda.get_device_name(0) if cuda else device
lines = ["# GPU check summary", "", f"Device: {name}; torch {torch.__version__}; elapsed {elapsed} s; memory column: `{mem}` (MiB)."]
if tiny:
    lines.append("TINY CPU smoke run (digits shape, tiny batches): it proves the pipeline; no paper figure can be read from it.")
lines.append("")

def get(frame, method, dataset, step, col):
    sel = frame[(frame.method == method) & (frame.dataset == dataset) & (frame.steps == step) & (frame.status == "ok")]
    if not len(sel) or col not in sel or pd.isna(sel[col].iloc[0]):
        return None
    return float(sel[col].iloc[0])

def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "n/a"

def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]

if (out / "table5.csv").exists():
    t5 = pd.read_csv(out / "table5.csv")
    paper = {datasets[0]: ("4.75x", "1.25x"), datasets[1]: ("5.75x (ImageNet-1K)", "1.02x")}
    rows = []
    for d in datasets:
        m = [get(t5, x, d, steps, mem) for x in ("mtt", "tesla", "tesla-exact")]
        t = [get(t5, x, d, steps, "step_time_s") for x in ("mtt", "tesla", "tesla-exact")]
        rows.append([d, paper[d][0], ratio(m[0], m[1]), paper[d][1], ratio(t[1], t[0]), ratio(m[2], m[1]), ratio(t[2], t[1])])
    lines += [f"Table 5 ({steps} steps):", ""]
    lines += table(["shape", "mtt/tesla memory (paper)", "ours", "tesla/mtt time (paper)", "ours",
                    "tesla-exact/tesla memory", "tesla-exact/tesla time"], rows)
if (out / "table4.csv").exists():
    t4 = pd.read_csv(out / "table4.csv")
    d4, all_steps = datasets[0], sorted(set(t4.steps))
    growth = ratio(get(t4, "tesla", d4, all_steps[-1], mem), get(t4, "tesla", d4, all_steps[0], mem))
    lines += ["", f"TESLA memory from {all_steps[0]} to {all_steps[-1]} steps ({d4}): ours {growth}; paper (A6000, "
              "CIFAR-100): 3155 MB at 1 step, 3647 MB at 50 (1.16x), 3913 MB at 100 (1.24x).", "",
              "Table 4 (memory MiB / step time s):", ""]
    rows = []
    for method in ("mtt", "tesla", "tesla-exact"):
        cells = [method]
        for s in all_steps:
            a, b = get(t4, method, d4, s, mem), get(t4, method, d4, s, "step_time_s")
            status = t4[(t4.method == method) & (t4.steps == s)].status
            cells.append(f"{a:.0f} / {b:.3f}" if a is not None and b is not None else (status.iloc[0] if len(status) else "n/a"))
        rows.append(cells)
    lines += table(["method"] + [f"{s} steps" for s in all_steps], rows)
if (out / "policies.csv").exists():
    p = pd.read_csv(out / "policies.csv")
    cols = [c for c in ("policy", "status", "peak_alloc_mib", "peak_saved_tensors_mib", "snapshot_mib", "step_time_s") if c in p]
    lines += ["", f"tesla-exact snapshot policies at {steps} steps:", ""]
    lines += table(cols, [[("" if pd.isna(v) else (f"{v:.3f}" if isinstance(v, float) else v)) for v in r] for r in p[cols].itertuples(index=False)])
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "gpu_check finished in $(elapsed) s; files in $OUT:"
ls -la "$OUT"
