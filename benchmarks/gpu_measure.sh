#!/usr/bin/env bash
# The workflow on a random-weight Llama, twice on one GPU host: a CUDA toolchain with a GPU tier,
# then a CPU toolchain with a CPU tier; then both sides' figures side by side (docs/gpu.md).
# SHAPE=1b (default): a ~1B Llama, imatrix, Q8_0 and Q4_K_M validated and benchmarked.
# SHAPE=8b: Llama-3.1-8B's shapes from BF16 safetensors shards, the whole workflow (package too) with
# Q8_0, Q4_K_M and IQ4_XS; run it with SIDES "cuda" (the CPU side would take hours).
# SHAPE=moe: a random Mixtral (8 experts, top 2, 2.4B parameters, 0.7B a token; float32 shards,
# 9.6 GB), the whole workflow like 8b; the validation report and card show its expert coverage.
# The host needs CUDA, CMake, Python 3.12 with torch, and no internet: everything else comes from
# the offline bundle made beforehand with `scripts/offline-bundle.sh .bundle` on a connected host.
# Usage: benchmarks/gpu_measure.sh [SIDES]   SIDES: "cuda cpu" (default), "cuda" or "cpu"
# Environment: BUNDLE (default .bundle), WORK (default /tmp/gguf-forge-gpu), OUT (copies of the
# figures, default $WORK/out), MODEL_ARGS (e.g. "--layers 2 --hidden 256" for a quick 1b trial),
# BUDGET_S (stop the workflow so that the script ends within this many seconds; run it again and it
# resumes where it stopped: the toolchain, the model and finished jobs are kept under WORK).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(cd "${BUNDLE:-$root/.bundle}" && pwd)
sides=${1:-cuda cpu}
shape=${SHAPE:-1b}
model=rand$shape
work=${WORK:-/tmp/gguf-forge-gpu}
out=${OUT:-$work/out}
cores=$(nproc)
mkdir -p "$work/src" "$out"
stamp() { echo "[$(date +%T)] $*"; }
started=$SECONDS
df -h "$work" | tee "$out/df-start.txt"

stamp "environment: a venv layered over the host's python3 packages, the bundle's wheels for the rest"
# (--system-site-packages would skip them where python3 is itself a virtual environment)
if [ ! -x "$work/venv/bin/python" ]; then
    python3 -m venv "$work/venv"
    purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
    python3 -c "$purelib" >"$("$work/venv/bin/python" -c "$purelib")/host-python.pth"
fi
"$work/venv/bin/python" -m pip install --quiet --no-index --find-links "$bundle/wheels" "snakemake==9.27.1" \
    "gguf==0.19.0" "jsonschema>=4.20" diskcache "transformers==4.57.6" "sentencepiece==0.2.1" "protobuf==5.29.5"
[ -d "$work/src/llama.cpp" ] || tar -xJf "$bundle/llama.cpp.tar.xz" -C "$work/src"
export PATH=$work/venv/bin:$PATH PYTHONPATH=$root:$bundle/site
export GGUF_FORGE_CACHE=$work/cache GGUF_FORGE_LLAMA_CPP_SRC=$work/src/llama.cpp
# The system compiler, which links libstdc++ as a shared library: a CC/CXX that links it statically
# into libllama makes llama-cpp-python crash beside the interpreter's own copy (docs/gpu.md). CUDAHOSTCXX
# too: nvcc's host compiler links libggml-cuda, and the lent H200 host sets it to its static-libstdc++ g++.
if [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi
nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader || true

stamp "toolchains (the workflow's own toolchain jobs then reuse them) and the model, side by side"
pids=()
for side in $sides; do
    mkdir -p "$work/$side"
    python -m workflow_scripts.toolchain --version 0.3.36 --backend "$side" --jobs "$cores" \
        --stamp "$work/$side/prebuilt.json" --log "$work/$side/toolchain.log" &
    pids+=($!)
done
[ -f "$work/$model/config.json" ] || python -m benchmarks.gpu_measure model "$work/$model" --shape "$shape" ${MODEL_ARGS:-}
for pid in "${pids[@]}"; do wait "$pid" || { tail -40 "$work"/*/toolchain.log; exit 1; }; done
for side in $sides; do
    stamp "$side toolchain built in $(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["build_seconds"])' \
        "$work/$side/prebuilt.json") s"
done

for side in $sides; do
    stamp "workflow, $side side"
    targets=$(python -m benchmarks.gpu_measure config --backend "$side" --model-dir "$work/$model" --shape "$shape" \
        --out "$work/$side/config.yaml")
    # 8B: llama-quantize on every core (the rule asks for 8): IQ4_XS took over 280 s on 8 threads, and a
    # job cut by a 10-minute device call's end starts over
    more=()
    [ "$shape" != 8b ] || more=(--set-threads "quantize=$cores")
    limit=0
    [ -z "${BUDGET_S:-}" ] || limit=$((BUDGET_S - (SECONDS - started) - 45))
    if [ -n "${BUDGET_S:-}" ] && [ "$limit" -lt 1 ]; then stamp "$side side: no time left in BUDGET_S; run again to go on"; continue; fi
    # --keep-going and no exit on failure: one failed job leaves a gap in the table, not an empty one
    (cd "$work/$side" && timeout -s INT -k 30 "$limit" snakemake -s "$root/Snakefile" --configfile config.yaml \
        --cores "$cores" --keep-going --rerun-incomplete "${more[@]}" $targets) \
        || stamp "$side side: stopped or some jobs failed (above); the table shows what was measured"
    if [ -f "$work/$side/results/summary/summary.md" ] && [ $((SECONDS - started)) -lt $((${BUDGET_S:-100000} - 150)) ]; then
        stamp "$side side: llama-bench by hand on the same files, against the workflow's figures"
        python -m benchmarks.bench_vs_hand --workdir "$work/$side" --model "$model" | tee "$out/$side-bench-vs-hand.txt" || true
    fi
    tar -czf "$out/$side-results.tar.gz" --ignore-failed-read --exclude '*.logits' --exclude '*.gguf' \
        --exclude '*.partial' -C "$work/$side" results
done

stamp "figures"
df -h "$work" | tee "$out/df-end.txt"
python -m benchmarks.gpu_measure table --cpu "$work/cpu" --cuda "$work/cuda" --shape "$shape" | tee "$out/gpu_table.md"
