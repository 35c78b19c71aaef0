#!/usr/bin/env bash
# Create .venv, install shardkit, make sample data, convert it to shards, inspect them, stream an epoch.
source "$(dirname "$0")/_venv.sh" ""
export PATH="$PWD/.venv/bin:$PATH"
set -x
python scripts/make_sample_data.py data
shardkit convert data/images/train shards/images --max-shard-samples 100 --overwrite
shardkit convert data/sequences/train.jsonl shards/sequences --overwrite
shardkit info shards/images
shardkit verify shards/sequences
python scripts/stream_demo.py shards/images shards/sequences
