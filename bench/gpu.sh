#!/usr/bin/env bash
# The GPU part of the benchmark suite in one go, on a CUDA host with jax[cuda], torch (CUDA), transformers, flax,
# optax, orbax-checkpoint and ml_collections installed (the commands below are the ones quoted in BENCHMARKS.md).
#
#   bash bench/gpu.sh OUT_DIR [STAGE ...]      # stages: env tests encode train train64 train_xla mfu memory fit packing
#                                              # (default: all but mfu and packing)
#
# JAX and torch share the GPU inside one process, so JAX's 75% pre-allocation is turned off. Each stage has a time
# limit and a failing stage does not stop the others; JSON results land in OUT_DIR, tables on stdout.
set -u
OUT=${1:?usage: bash bench/gpu.sh OUT_DIR [STAGE ...]}
shift
STAGES=${*:-env tests encode train train64 train_xla memory fit}
mkdir -p "$OUT"
# No pre-allocation (torch shares the GPU), but let JAX's pool grow to 95% (the default cap is 75%).
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
run() {  # run NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0))s" >&2
  grep -v "^\[" "$OUT/$name.log" | tail -n 40
}
for stage in $STAGES; do
  case $stage in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      $PY -c "import jax, jaxlib, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(), \
'transformers', transformers.__version__)" ;;
    tests)
      run tests 300 $PY -m pytest tests/test_gpu.py -q -x -p no:cacheprovider ;;
    encode)  # fp32 b32, bf16 b32, bf16 b128 (xla attention), then bf16 with cuDNN attention
      run encode 420 $PY -m bench.run --suite gpu --only encode --reps 7 --no-shapes --json "$OUT/encode.json"
      run encode_cudnn 300 $PY -m bench.run --suite gpu --only encode --reps 7 --no-shapes --attention cudnn \
        --json "$OUT/encode_cudnn.json" ;;
    train)  # T5-base, L=256, global batch 256 (+256 positives, +256 negatives), bf16, cuDNN attention: MFU
      run train256 300 $PY -m bench.run --suite gpu --only train --attention cudnn --reps 3 --no-torch \
        --json "$OUT/train256.json" ;;
    train64)  # the same step at global batch 64, where the PyTorch re-statement fits too: the ratio
      run train64 300 $PY -m bench.run --suite gpu --only train --attention cudnn --reps 3 --global-batch 64 \
        --json "$OUT/train64.json" ;;
    train_xla)  # XLA attention ([B, H, L, L] fp32 scores in memory) at global batch 64
      run train64_xla 300 $PY -m bench.run --suite gpu --only train --reps 3 --global-batch 64 --no-torch \
        --json "$OUT/train64_xla.json" ;;
    mfu)  # where the B=256 step's time goes: dropout's random bits, the PRNG, remat (each JAX only)
      run train256_nodrop 300 $PY -m bench.run --suite gpu --only train --attention cudnn --reps 3 --no-torch \
        --dropout 0 --json "$OUT/train256_nodrop.json"
      run train256_rbg 300 $PY -m bench.run --suite gpu --only train --attention cudnn --reps 3 --no-torch \
        --prng unsafe_rbg --json "$OUT/train256_rbg.json"
      run train256_dots 300 $PY -m bench.run --suite gpu --only train --attention cudnn --reps 3 --no-torch \
        --remat dots --json "$OUT/train256_dots.json" ;;
    memory)
      run memory 400 $PY -m bench.run --suite gpu --only memory,scaling --reps 3 --attention cudnn \
        --json "$OUT/memory.json" ;;
    fit)
      run fit 500 $PY -m bench.run --suite gpu --only fit --attention cudnn --json "$OUT/fit.json" ;;
    packing)  # packed training (issue 12; XLA attention: cuDNN's kernel takes no segments). MEDI_MIX: the mix
      # `python -m bench.packing mix` builds from ../shared (carry it); T5-base bf16 at global batch 256 with
      # real-token MFU and padded steps beside it, then the T5-large fit check: 4,096 queries + 1 negative at
      # length 256 with gradient caching, packed, peak device memory
      MIX=${MEDI_MIX:?set MEDI_MIX to the MEDI-shaped mix (python -m bench.packing mix --out FILE)}
      run packing_base256 420 $PY -m bench.packing step --medi "$MIX" --size base --global-batch 256 \
        --dtype bfloat16 --steps 24 --warmup 4 --padded-every 6 --json "$OUT/packing_base256.json"
      run packing_fit_large 420 $PY -m bench.packing step --medi "$MIX" --size large --global-batch 4096 \
        --length 256 --dtype bfloat16 --remat full --grad-cache-chunk 128 --steps 3 --padded-every 0 \
        --json "$OUT/packing_fit_large.json" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
