#!/bin/bash
# The GPU paths on one GPU, after `make demo`: both rollout engines on CUDA (benchmarks/cuda_engines.py), then
# eight GRPO steps of the demo's stage on the GPU three ways: float32 with the torch engine, bf16-mixed with
# the hf engine, and FSDP2 (ModelParallelStrategy) with the torch engine. Usage: bash benchmarks/gpu_paths.sh OUTDIR
set -u
out=${1:?usage: bash benchmarks/gpu_paths.sh OUTDIR}
mkdir -p "$out"
python benchmarks/cuda_engines.py --out "$out/cuda_engines.json"
common=(--config configs/synthetic/grpo-recycle.yaml --trainer.accelerator=gpu --trainer.devices=1
        --trainer.limit_train_batches=8 --trainer.val_check_interval=4)
fit() {  # NAME, then extra overrides
  local name=$1 start=$SECONDS
  shift
  python -m lit_search_rl.cli fit "${common[@]}" --trainer.logger.init_args.name="$name" \
    --model.init_args.export_dir="runs/demo/$name-model" "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s; export: $(ls "runs/demo/$name-model" 2>/dev/null | tr '\n' ' ')"
}
fit gpu-fp32 --model.init_args.engine=torch
fit gpu-bf16-hf --model.init_args.engine=hf --trainer.precision=bf16-mixed
fit gpu-fsdp2 --model.init_args.engine=torch --trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy \
  --trainer.strategy.data_parallel_size=1 --trainer.strategy.tensor_parallel_size=1
