#!/usr/bin/env bash
# The fine-tuning study of run_hippocampus.py at full width on one GPU: the planner's gpu8
# target (FMUNet 32-512, the planner's patch), box-fusion pretraining, then 10 labelled cases
# from scratch with nnU-Net's SGD and MIS-FM's Adam recipe and fine-tuned with Adam, scored on
# the same 40 held-out cases. Budgets are a smoke of the whole path sized for about 8 minutes
# on one H100 (2000 pretraining and 500 fine-tuning iterations); the stage seconds in
# results.md give iterations per second. Raise --pretrain-iterations/--iterations and add
# --train-seeds for the real study.
set -euo pipefail
cd "$(dirname "$0")/../.."
python benchmarks/hippocampus/run_hippocampus.py \
    --work benchmarks/_work/hippocampus_gpu --target gpu8 --patch-size 0 0 0 --device cuda --workers 8 \
    --pretrain-iterations 2000 --iterations 500 --iterations-per-epoch 250 \
    --runs small_scratch small_scratchadam small_volfboxadam --train-seeds 12345 "$@"
