#!/usr/bin/env bash
# The runs behind results/calibration/: for each model and kind of text, `turboquant perplexity`
# with the turbo types calibrated on the built-in paragraph, on another part of the same kind of
# text, and on the scored file itself (whose first chunk is what the calibration then reads);
# then turbo3 over three seeds of its random signs on code, and a context of 2048 tokens. The
# texts come from scripts/experiments/calibration-texts.py.
#
#   scripts/experiments/calibration-study.sh [CHUNKS]
set -euo pipefail
cd "$(dirname "$0")/../.."
tq=./target/release/turboquant
texts=results/calibration/texts
out=results/calibration
chunks=${1:-16}
wiki=../shared/data/wikitext-2-test.txt

run() { # model kind scored-file name extra-args... (the JSON is MODEL-KIND-NAME.json)
  local model=$1 kind=$2 file=$3 name=$4
  shift 4
  local json=$out/$model-$kind-$name.json
  [ -s "$json" ] && return 0
  echo "== $json"
  $tq perplexity -m "$model" -f "$file" -c 512 --chunks "$chunks" "$@" --json "$json"
}

long() { # like run, at -c 2048 over a quarter of the chunks (the same tokens)
  local model=$1 kind=$2 file=$3 name=$4
  shift 4
  local json=$out/$model-$kind-$name.json
  [ -s "$json" ] && return 0
  echo "== $json"
  $tq perplexity -m "$model" -f "$file" -c 2048 --chunks $((chunks / 4)) "$@" --json "$json"
}

for model in smollm2-135m gemma3-270m; do
  short=${model%%-*}
  for kind in wikitext code german chat; do
    case $kind in
      wikitext) scored=$wiki; calib=$texts/wikitext-calibration.txt; special=() ;;
      chat) scored=$texts/chat-$short-scored.txt; calib=$texts/chat-$short-calibration.txt; special=(--parse-special) ;;
      *) scored=$texts/$kind-scored.txt; calib=$texts/$kind-calibration.txt; special=() ;;
    esac
    run $model $kind "$scored" builtin --kv-quant f16,q4_0,turbo4,turbo3 "${special[@]}"
    run $model $kind "$scored" other --kv-quant f16,turbo4,turbo3 --turbo-calibration "$calib" "${special[@]}"
  done
done
for model in smollm2-135m gemma3-270m; do
  short=${model%%-*}
  for kind in wikitext code german chat; do
    case $kind in
      wikitext) scored=$wiki; special=() ;;
      chat) scored=$texts/chat-$short-scored.txt; special=(--parse-special) ;;
      *) scored=$texts/$kind-scored.txt; special=() ;;
    esac
    run $model $kind "$scored" chunk1 --kv-quant f16,turbo4,turbo3 --turbo-calibration "$scored" "${special[@]}"
  done
done

# does the gain on code hold for other rotations? turbo3 over three seeds of its random signs
for model in smollm2-135m gemma3-270m; do
  run $model code $texts/code-scored.txt builtin-seeds --kv-quant f16,turbo3 --turbo-seeds 0,1,2
  run $model code $texts/code-scored.txt other-seeds --kv-quant f16,turbo3 --turbo-seeds 0,1,2 \
    --turbo-calibration $texts/code-calibration.txt
done

# a long context, where the calibration reads 2048 tokens of a given text and 300 of the built-in one
for kind in wikitext code; do
  case $kind in
    wikitext) scored=$wiki; calib=$texts/wikitext-calibration.txt ;;
    *) scored=$texts/$kind-scored.txt; calib=$texts/$kind-calibration.txt ;;
  esac
  long smollm2-135m $kind "$scored" c2048-builtin --kv-quant f16,q4_0,turbo4,turbo3
  long smollm2-135m $kind "$scored" c2048-other --kv-quant f16,turbo4,turbo3 --turbo-calibration "$calib"
done
