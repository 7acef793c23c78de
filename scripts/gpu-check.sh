#!/usr/bin/env bash
# The GPU check: runs on a bare x86-64 machine with one NVIDIA GPU, its driver, CUDA and PyTorch,
# but no Rust toolchain and no network, from the folder `cargo xtask gpu-bundle` made here
# (target/gpu-bundle: release `kiln`, `kiln_step` and the kiln-models test binary, whose parity
# and loading tests run here, built with wgpu; the Vulkan loader packages, the tiny fixtures, the
# anchor script).
#
#   scripts/gpu-check.sh OUT_DIR [BUNDLE_DIR | BUNDLE.tar.xz]
#
# The bundle defaults to target/gpu-bundle, else target/gpu-bundle.tar.xz (the form that is
# carried to the device machine; it is unpacked into a temporary folder).
#
# It runs (1) the parity tests on wgpu (kiln's BERT, GPT-2 and M2-BERT against transformers'
# outputs), (2) `kiln_step` full / LoRA training steps and a full inference batch on wgpu at
# 16 x 128 and 32 x 512 on a MiniLM-shaped BERT at random initialisation, (3) the same cases in
# PyTorch with `anchor.py --device cuda`, and writes OUT_DIR/gpu-check.json and
# OUT_DIR/gpu-check.md (plus one log per step). Each step has its own time limit, so the whole
# check stays under 8 minutes. Without an NVIDIA GPU (nvidia-smi absent) it runs a smoke version
# of the same steps: wgpu on whatever Vulkan driver is there (lavapipe), tiny shapes, PyTorch
# on the CPU.
set -uo pipefail

out=${1:?usage: scripts/gpu-check.sh OUT_DIR [BUNDLE_DIR | BUNDLE.tar.xz]}
here=$(cd "$(dirname "$0")/.." && pwd)
bundle=${2:-$here/target/gpu-bundle}
if [ ! -d "$bundle" ] && [ -z "${2:-}" ]; then bundle=$here/target/gpu-bundle.tar.xz; fi
if [ -f "$bundle" ]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar -xJf "$bundle" -C "$unpacked" || { echo "cannot unpack $bundle" >&2; exit 2; }
  bundle=$unpacked/gpu-bundle
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
started=$(date +%s)
[ -x "$bundle/bin/kiln_step" ] || { echo "no bundle in $bundle: run \`cargo xtask gpu-bundle\` on the build machine" >&2; exit 2; }

# wgpu needs the Vulkan loader; the NVIDIA driver brings the ICD but maybe not libvulkan.so.1.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  for deb in "$bundle"/debs/*.deb; do dpkg -x "$deb" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=$nvidia_icd

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  mode=gpu
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
  shapes=("16 128" "32 512")
  steps=(--steps 5 --warmup 2)
  torch_device=cuda
  case_limit=75
else
  mode=smoke
  echo "no NVIDIA GPU: smoke run (Vulkan's software driver, tiny shapes, PyTorch on the CPU)" > "$out/gpu.txt"
  shapes=("2 16")
  steps=(--steps 1 --warmup 0)
  torch_device=cpu
  case_limit=300
fi
echo "gpu-check: $mode mode; $(cat "$out/gpu.txt")"

# 1. Parity on wgpu.
parity_status=0
for test in parity loading; do
  echo "gpu-check: $test tests on wgpu"
  KILN_TEST_DEVICE=wgpu KILN_FIXTURES="$bundle/fixtures" timeout 150 \
    "$bundle/bin/models" --test-threads 1 "$test::" > "$out/$test.log" 2>&1 || parity_status=1
  tail -n 3 "$out/$test.log"
done

# 2. and 3. The step cases, kiln on wgpu and PyTorch, one JSON line each into cases.jsonl.
: > "$out/cases.jsonl"
run_case() { # engine method step batch len
  local engine=$1 method=$2 step=$3 batch=$4 len=$5 log="$out/$1-$2-$3-$4x$5.log"
  echo "gpu-check: $engine $method $step ${batch}x$len"
  if [ "$engine" = kiln ]; then
    timeout "$case_limit" "$bundle/bin/kiln_step" --device wgpu --method "$method" --mode "$step" \
      --batch "$batch" --len "$len" "${steps[@]}" > "$log" 2>&1
  else
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 timeout "$case_limit" python3 "$bundle/anchor/anchor.py" \
      --device "$torch_device" --method "$method" --mode "$step" --batch "$batch" --len "$len" \
      "${steps[@]}" > "$log" 2>&1
  fi
  local status=$?
  if [ $status -eq 0 ] && tail -n 1 "$log" | grep -q '^{'; then
    tail -n 1 "$log" >> "$out/cases.jsonl"
  else
    printf '{"engine":"%s","method":"%s","mode":"%s","batch":%s,"len":%s,"error":"exit %s, see %s"}\n' \
      "$engine" "$method" "$step" "$batch" "$len" "$status" "$(basename "$log")" >> "$out/cases.jsonl"
  fi
}
for shape in "${shapes[@]}"; do
  read -r batch len <<< "$shape"
  for case in "full train" "lora train" "full infer"; do
    read -r method step <<< "$case"
    run_case kiln "$method" "$step" "$batch" "$len"
    run_case pytorch "$method" "$step" "$batch" "$len"
  done
done

# The report.
MODE=$mode PARITY=$parity_status SECONDS_TAKEN=$(( $(date +%s) - started )) OUT="$out" python3 - <<'PY'
import json, os
out = os.environ["OUT"]
cases = [json.loads(line) for line in open(os.path.join(out, "cases.jsonl")) if line.strip()]
gpu = open(os.path.join(out, "gpu.txt")).read().strip()
key = lambda c: (c["method"], c["mode"], c["batch"], c["len"])
rows = []
for k in sorted({key(c) for c in cases}, key=lambda k: (k[2] * k[3], k)):
    pick = lambda engine: next((c for c in cases if key(c) == k and c["engine"] == engine), {})
    kiln, torch = pick("kiln"), pick("pytorch")
    ratio = (torch.get("median_ms") / kiln["median_ms"]) if kiln.get("median_ms") and torch.get("median_ms") else None
    rows.append({"case": f"{k[0]} {k[1]}", "batch": k[2], "len": k[3],
                 "kiln_wgpu_ms": kiln.get("median_ms"), "pytorch_ms": torch.get("median_ms"),
                 "speed_ratio": ratio, "pytorch_peak_gpu_mib": torch.get("peak_gpu_mib"),
                 "kiln_error": kiln.get("error"), "pytorch_error": torch.get("error")})
report = {"mode": os.environ["MODE"], "gpu": gpu, "parity_passed": os.environ["PARITY"] == "0",
          "seconds": int(os.environ["SECONDS_TAKEN"]), "rows": rows, "cases": cases}
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
fmt = lambda v, spec: "-" if v is None else format(v, spec)
lines = [f"# kiln GPU check ({report['mode']})", "", f"GPU: {gpu}", "",
         f"Parity tests on wgpu: {'passed' if report['parity_passed'] else 'FAILED (see parity.log, loading.log)'}", "",
         "| case | batch x len | kiln wgpu ms | PyTorch ms | kiln / PyTorch speed (x) | PyTorch peak GPU MiB |",
         "|---|---|---|---|---|---|"]
for r in rows:
    note = "".join(f" ({e})" for e in (r["kiln_error"], r["pytorch_error"]) if e)
    lines.append(f"| {r['case']}{note} | {r['batch']} x {r['len']} | {fmt(r['kiln_wgpu_ms'], '.1f')} | "
                 f"{fmt(r['pytorch_ms'], '.1f')} | {fmt(r['speed_ratio'], '.2f')} | {fmt(r['pytorch_peak_gpu_mib'], '.0f')} |")
lines += ["", f"Took {report['seconds']} s."]
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
