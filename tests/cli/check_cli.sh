#!/usr/bin/env bash
# Command-line checks of mamba-r1: the documented commands work, and bad input ends in one clear
# message and a non-zero exit code. Usage: tests/cli/check_cli.sh BUILD_DIR
set -u
BIN="$1/mamba-r1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0

# expect NAME CODE PATTERN -- COMMAND...: the command exits with CODE and prints PATTERN (grep -E).
expect() {
  local name="$1" code="$2" pattern="$3"
  shift 4
  local output status
  output="$("$@" 2>&1)"
  status=$?
  if [ "$status" -eq "$code" ] && grep -qE -- "$pattern" <<<"$output"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name: exit $status (expected $code), output:"
    echo "$output" | tail -n 20
  fi
}

seed="$ROOT/experiments/seed_example.toml"
expect "list shows every kind" 0 "router:" -- "$BIN" list
expect "list shows the switch router" 0 "switch +top-1" -- "$BIN" list
expect "list shows the per-block keys" 0 "moe .*per block in \[model.layers.i\]: num_experts, expert_dim, router" -- "$BIN" list
expect "run the seed example (short)" 0 "output shape \(4, 64, 256\)" -- \
  "$BIN" run "$seed" --set task.seq_len=64 --set run.repeats=1 --out "$WORK/seed"
expect "summary.json written" 0 "tokens_per_second" -- cat "$WORK/seed/summary.json"
expect "a forward run writes report.md with its routing" 0 "Routing of the last timed pass" -- cat "$WORK/seed/report.md"
expect "resolved config written" 0 "d_state = 16" -- cat "$WORK/seed/config.toml"
expect "unknown key names its --set, key and valid keys" 2 "--set model.dimm=3: model.dimm: unknown key.*valid keys" -- \
  "$BIN" run "$seed" --set model.dimm=3 --out "$WORK/bad"
expect "wrong type" 2 "model.d_state: expected an integer" -- "$BIN" run "$seed" --set model.d_state=\"x\" --out "$WORK/bad"
expect "unknown router" 2 "router.name.*valid: .*switch" -- "$BIN" run "$seed" --set router.name=nosuch --out "$WORK/bad"
expect "seq_len above max_seq_len" 2 "task.seq_len.*max_seq_len" -- \
  "$BIN" run "$seed" --set task.seq_len=4096 --out "$WORK/bad"
expect "missing file" 2 "cannot open" -- "$BIN" run "$WORK/none.toml"
expect "unknown command" 2 "unknown command" -- "$BIN" fly
expect "unknown option" 2 "unknown option --wings" -- "$BIN" run "$seed" --wings 2
expect "cuda backend without a GPU" 1 "backend cuda requested" -- "$BIN" run "$seed" --backend cuda --out "$WORK/refused"
expect "a refused backend leaves no run folder" 0 "" -- test ! -e "$WORK/refused"

# init, then forward on the written weights
small="$WORK/small.toml"
cat >"$small" <<'TOML'
[model]
dim = 16
depth = 1
d_state = 4
num_experts = 2
expert_dim = 8
max_seq_len = 32
vocab_size = 12
TOML
expect "init writes weights" 0 "wrote .*weights.safetensors" -- "$BIN" init "$small" --output "$WORK/weights.safetensors" --seed 3
expect "forward without --input" 2 "forward needs --input" -- \
  "$BIN" forward "$small" --weights "$WORK/weights.safetensors" --output "$WORK/out.safetensors"
expect "weights of another shape" 2 "backbone.embedding.weight' has shape \(12, 16\).*expects \(12, 32\)" -- \
  "$BIN" forward "$small" --set model.dim=32 --weights "$WORK/weights.safetensors" --input "$WORK/weights.safetensors" \
  --output "$WORK/out.safetensors"
# a mamba_ssm-style checkpoint of a tied model that also stores lm_head.weight
python3 - "$WORK" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
work = sys.argv[1]
weights = load_file(f"{work}/weights.safetensors")
weights["lm_head.weight"] = weights["backbone.embedding.weight"].copy()
save_file(weights, f"{work}/tied_head.safetensors")
weights["lm_head.weight"] = weights["lm_head.weight"] + 1
save_file(weights, f"{work}/other_head.safetensors")
save_file({"tokens": np.arange(10, dtype=np.int64).reshape(2, 5) % 12}, f"{work}/tokens.safetensors")
PY
expect "forward on tokens" 0 "wrote .*out.safetensors" -- \
  "$BIN" forward "$small" --weights "$WORK/weights.safetensors" --input "$WORK/tokens.safetensors" --output "$WORK/out.safetensors"
expect "a tied checkpoint may hold lm_head.weight" 0 "wrote" -- \
  "$BIN" forward "$small" --weights "$WORK/tied_head.safetensors" --input "$WORK/tokens.safetensors" --output "$WORK/out.safetensors"
expect "a different lm_head.weight with tied embeddings" 2 "differs from backbone.embedding.weight" -- \
  "$BIN" forward "$small" --weights "$WORK/other_head.safetensors" --input "$WORK/tokens.safetensors" --output "$WORK/out.safetensors"
expect "forward refuses to write over its weights" 2 "--output .* is the --weights file" -- \
  "$BIN" forward "$small" --weights "$WORK/weights.safetensors" --input "$WORK/tokens.safetensors" --output "$WORK/weights.safetensors"
expect "a folder as --weights" 2 "$WORK: is a folder, not a safetensors file" -- \
  "$BIN" forward "$small" --weights "$WORK" --input "$WORK/tokens.safetensors" --output "$WORK/out.safetensors"
expect "an option the command does not read" 2 "init does not take --backward" -- \
  "$BIN" init "$small" --output "$WORK/unused.safetensors" --backward
expect "an option given twice" 2 "--output is given twice" -- \
  "$BIN" init "$small" --output "$WORK/a.safetensors" --output "$WORK/b.safetensors"
expect "--help after the command shows its usage" 0 "mamba-r1 forward FILE.toml --weights" -- "$BIN" forward -h
expect "--help after an unknown command" 2 "unknown command 'fly'" -- "$BIN" fly --help
expect "an unknown --backend" 2 "--backend expects one of auto, cpu, cuda, found 'gpu'" -- \
  "$BIN" forward "$small" --weights "$WORK/weights.safetensors" --input "$WORK/tokens.safetensors" \
  --output "$WORK/unused.safetensors" --backend gpu
expect "--threads above the limit is named as given" 2 "--threads expects at most 1024, found 5000" -- \
  "$BIN" run "$seed" --threads 5000 --out "$WORK/bad"
expect "forward --backward writes loss and gradients" 0 "loss [0-9.]+" -- \
  "$BIN" forward "$small" --weights "$WORK/weights.safetensors" --input "$WORK/tokens.safetensors" --output "$WORK/grads.safetensors" --backward
expect "validate without a GPU" 3 "no GPU" -- "$BIN" validate
expect "validate checks every key of the file first" 2 "model.dimm: unknown key" -- \
  "$BIN" validate "$seed" --set model.dimm=3
expect "a forward run checks [training] too" 2 "training.stepz: unknown key" -- \
  "$BIN" run "$seed" --set training.stepz=5 --out "$WORK/bad"
expect "--set=key=value as --set key=value" 0 "output shape \(4, 32, 256\)" -- \
  "$BIN" run "$seed" --set=task.seq_len=32 --set run.repeats=1 --out "$WORK/inline_set"
expect "a forward run's effective.toml leaves out [training]" 1 "" -- \
  grep -qE "^\[(training|optimizer)\]" "$WORK/inline_set/effective.toml"

expect "a forward run warns that its [training] is not used" 0 "\[training\] is checked but not used: the task \(forward" -- \
  "$BIN" run "$seed" --set task.seq_len=32 --set run.repeats=1 --set training.steps=9 --out "$WORK/unused_training"

quick="$ROOT/experiments/quickstart.toml"
short=(--set training.steps=4 --set training.log_every=2 --set training.eval_every=2 --set training.eval_batches=1)
expect "a training run warns that run.repeats is not used" 0 "run.repeats is not used by a training run" -- \
  "$BIN" run "$quick" "${short[@]}" --set training.steps=1 --set run.repeats=3 --out "$WORK/unused_repeats"
expect "a capacity of 0, which drops every token, is warned about" 0 "router capacity is 0 for a batch of .* every token is dropped" -- \
  "$BIN" run "$quick" "${short[@]}" --set training.steps=1 --set router.capacity_factor=0.0001 \
  --set router.min_capacity=0 --out "$WORK/zero_capacity"
expect "a batch that cannot fit in memory is refused before it is made" 2 "task.batch_size: 576460752303423489 sequences of seq_len .* one activation alone needs" -- \
  "$BIN" run "$quick" --set task.batch_size=576460752303423489 --out "$WORK/bad"
expect "a training run writes report.md" 0 "eval \(last evaluation\)" -- \
  bash -c '"$0" run "$1" "${@:3}" --out "$2/seed0" >/dev/null 2>&1 && cat "$2/seed0/report.md"' \
  "$BIN" "$quick" "$WORK" "${short[@]}"
expect "effective.toml holds the defaults" 0 "^final_lr_ratio = 0.1$" -- cat "$WORK/seed0/effective.toml"
expect "effective.toml runs the same run again" 0 "^same$" -- bash -c '"$0" run "$1/seed0/effective.toml" \
  --out "$1/again" >/dev/null 2>&1 && python3 -c "import json, sys; a, b = (json.load(open(f))[\"final\"] for f in \
  sys.argv[1:]); print(\"same\" if a == b else (a, b))" "$1/seed0/summary.json" "$1/again/summary.json"' "$BIN" "$WORK"
"$BIN" run "$quick" "${short[@]}" --set run.seed=1 --out "$WORK/seed1" >/dev/null 2>&1
expect "compare names the differing settings" 0 "differing settings: run.seed" -- \
  "$BIN" compare "$WORK/seed0" "$WORK/seed1" --out "$WORK/compared"
expect "compare writes results.md" 0 "^# Comparison of 2 runs" -- cat "$WORK/compared/results.md"
expect "compare needs two runs" 2 "compare needs two or more run folders" -- "$BIN" compare "$WORK/seed0"
expect "compare names a folder that is not a run" 2 "nowhere: not a run folder" -- \
  "$BIN" compare "$WORK/seed0" "$WORK/nowhere"

# Run folders: nothing of an earlier run is written over or lost.
expect "a new run into a run's folder is refused" 2 "seed0 already holds a run \(config.toml\); continue it with --resume" -- \
  "$BIN" run "$quick" "${short[@]}" --out "$WORK/seed0"
mkdir -p "$WORK/a_sweep" && echo '{}' >"$WORK/a_sweep/sweep.json"
expect "a new run into a sweep's folder points to sweep --resume" 2 "a_sweep already holds a sweep \(sweep.json\); continue it with \`mamba-r1 sweep FILE --resume" -- \
  "$BIN" run "$quick" "${short[@]}" --out "$WORK/a_sweep"
expect "compare into a run's folder is refused" 2 "seed0 holds a run or a sweep" -- \
  "$BIN" compare "$WORK/seed0" "$WORK/seed1" --out "$WORK/seed0"
# The default folders of this second and the next few are taken (as by runs started just before).
expect "a run whose default folder is taken gets NAME-TIMESTAMP-2" 0 "^runs/quickstart-[0-9]{8}-[0-9]{6}-2$" -- \
  bash -c 'mkdir "$1/same" && cd "$1/same" && for i in 0 1 2 3 4 5; do mkdir -p "runs/quickstart-$(date -d "+$i sec" \
  +%Y%m%d-%H%M%S)"; done; "$0" run "$2" --set training.steps=1 --set training.eval_batches=1 >/dev/null 2>&1 &&
  ls -d runs/*-2' "$BIN" "$WORK" "$quick"
cp "$WORK/seed0/config.toml" "$WORK/seed0_config.toml"
expect "a resume of another model is refused, naming the setting" 2 "settings differ from .*seed0/effective.toml: model.dim 64 -> 32; model.dt_rank 4 -> 2\. A resumed run continues" -- \
  "$BIN" run "$quick" "${short[@]}" --set model.dim=32 --out "$WORK/seed0" --resume
expect "... and leaves the run's config.toml as it was" 0 "" -- cmp "$WORK/seed0/config.toml" "$WORK/seed0_config.toml"
expect "a resume of a folder without a run makes nothing" 2 "nothing/trainer_state.json not found" -- \
  "$BIN" run "$quick" --out "$WORK/nothing" --resume
expect "... not even the folder" 0 "" -- test ! -e "$WORK/nothing"
expect "a resume with another router is refused" 2 "router.name \"switch\" -> \"topk\"" -- \
  "$BIN" run "$quick" "${short[@]}" --set run.seed=1 --set router.name=topk --out "$WORK/seed1" --resume
expect "a resume may train longer, and says so" 0 "--resume with changed settings: training.steps 4 -> 6" -- \
  "$BIN" run "$quick" "${short[@]}" --set run.seed=1 --set training.steps=6 --out "$WORK/seed1" --resume
expect "... and report.md records it" 0 "^Resumed at step 4 with \`training.steps 4 -> 6\`\.$" -- cat "$WORK/seed1/report.md"
echo "{" >"$WORK/seed1/trainer_state.json"
expect "a damaged trainer_state.json is named" 2 "seed1/trainer_state.json: not valid JSON" -- \
  "$BIN" run "$quick" "${short[@]}" --set run.seed=1 --set training.steps=6 --out "$WORK/seed1" --resume
expect "an unknown log level is a usage error" 2 "--log-level expects debug, info, warn or error" -- \
  "$BIN" run "$quick" --log-level bogus

# The resume check reads the settings the run used (effective.toml): a deleted config.toml does not turn
# it off, and a default spelt out is no change. A resume that trains nothing is still recorded.
rm "$WORK/seed0/config.toml"
expect "a resume is checked against effective.toml" 2 "settings differ from the run's .*seed0/effective.toml: router.name \"switch\" -> \"topk\"" -- \
  "$BIN" run "$quick" "${short[@]}" --set router.name=topk --out "$WORK/seed0" --resume
expect "a default spelt out is no change" 0 "nothing left to train" -- \
  "$BIN" run "$quick" "${short[@]}" --set router.aux_loss_coef=0.01 --set model.dt_rank=4 --out "$WORK/seed0" --resume
expect "... and two resumes that trained nothing are both recorded" 0 "^2$" -- bash -c '"$0" run "$1" "${@:3}" \
  --set run.threads=1 --out "$2" --resume >/dev/null 2>&1 && python3 -c "import json, sys; \
  print(len(json.load(open(sys.argv[1]))[\"resumes\"]))" "$2/trainer_state.json"' "$BIN" "$quick" "$WORK/seed0" "${short[@]}"
expect "a new run into a comparison's folder is refused" 2 "compared already holds a comparison \(results.md\)" -- \
  "$BIN" run "$quick" "${short[@]}" --out "$WORK/compared"

# SIGTERM (timeout, job schedulers) saves a checkpoint as Ctrl-C does; the run can go on with --resume.
# The signal is sent once training is under way (a first metrics line), as the handler is set up then.
expect "SIGTERM ends a run with a checkpoint (exit 130)" 130 "interrupted at step [0-9]+: checkpoint saved" -- \
  bash -c '"$0" run "$1" --set training.steps=100000 --set training.eval_every=0 --set training.log_every=1 \
  --set run.threads=1 --out "$2" & pid=$!; for i in $(seq 600); do [ -s "$2/metrics.jsonl" ] && break; sleep 0.1; done
  kill -TERM $pid; wait $pid' "$BIN" "$quick" "$WORK/terminated"
expect "... whose folder has its effective.toml and trainer_state.json" 0 "" -- \
  test -s "$WORK/terminated/effective.toml" -a -s "$WORK/terminated/trainer_state.json"
# A sweep resumed with a changed experiment is refused before any run starts, its runs left resumable.
printf '[sweep]\n"router.name" = ["switch"]\n' | cat "$quick" - >"$WORK/one_sweep.toml"
bash -c '"$0" sweep "$1" --set training.steps=100000 --set training.eval_every=0 --set training.log_every=1 \
  --set run.threads=1 --out "$2" >/dev/null 2>&1 & pid=$!; for i in $(seq 600); do
  [ -s "$2/runs/00-router.name=switch/metrics.jsonl" ] && break; sleep 0.1; done; kill -TERM $pid; wait $pid' \
  "$BIN" "$WORK/one_sweep.toml" "$WORK/one_sweep"
expect "a sweep resumed with another learning rate is refused" 2 "sweep run 00-router.name=switch: --resume: settings differ .*training.learning_rate" -- \
  "$BIN" sweep "$WORK/one_sweep.toml" --set training.steps=100000 --set training.eval_every=0 \
  --set training.log_every=1 --set run.threads=1 --set training.learning_rate=1e-3 --out "$WORK/one_sweep" --resume
expect "... and its run stays interrupted" 0 "^interrupted$" -- python3 -c "import json, sys; \
  print(json.load(open(sys.argv[1]))['runs'][0]['status'])" "$WORK/one_sweep/sweep.json"

# A run killed by a signal after a checkpoint (SIGKILL, as the out-of-memory killer sends) is kept for
# --resume, which continues it from that checkpoint.
printf '[sweep]\n"router.name" = ["switch", "topk"]\n' | cat "$quick" - >"$WORK/two_sweep.toml"
two=(--set training.steps=100000 --set training.eval_every=10 --set training.eval_batches=1 --set run.threads=1)
expect "a sweep whose runs were killed says they can be continued" 1 "ended by signal 9; its last checkpoint is kept" -- \
  bash -c '"$0" sweep "$1" "${@:3}" --jobs 2 --out "$2" 2>&1 & pid=$!; for i in $(seq 600); do
  [ -s "$2/runs/00-router.name=switch/trainer_state.json" ] && [ -s "$2/runs/01-router.name=topk/trainer_state.json" ] &&
  break; sleep 0.1; done; pkill -KILL -f -- "--out $2/runs/"; wait $pid' "$BIN" "$WORK/two_sweep.toml" "$WORK/two_sweep" "${two[@]}"
expect "... and sweep --resume continues them from their checkpoints" 130 "01-router.name=topk \(continuing from its checkpoint\)" -- \
  bash -c '"$0" sweep "$1" "${@:3}" --jobs 2 --out "$2" --resume >"$2.log" 2>&1 & pid=$!; for i in $(seq 600); do
  [ "$(grep -c "continuing from its checkpoint" "$2.log")" -ge 2 ] && break; sleep 0.1; done; kill -INT $pid
  wait $pid; status=$?; cat "$2.log"; exit $status' "$BIN" "$WORK/two_sweep.toml" "$WORK/two_sweep" "${two[@]}"

# A failed run (here a diverging loss) says so in its summary.json, and compare shows it as failed.
expect "a diverging run fails" 1 "the loss is -?nan at step" -- "$BIN" run "$quick" "${short[@]}" \
  --set training.learning_rate=1e6 --set training.grad_clip=0 --out "$WORK/diverged"
expect "... and its report.md says so, with the charts of the steps before" 0 "^\*\*The run failed:\*\* the loss is" -- \
  cat "$WORK/diverged/report.md"
expect "... and compare lists it as failed, with its error" 0 "^\* 1 \(diverged\): the loss is -?nan at step" -- bash -c '"$0" compare "$1/seed0" \
  "$1/diverged" --out "$1/with_failed" >/dev/null 2>&1 && cat "$1/with_failed/results.md"' "$BIN" "$WORK"

# The log goes to stderr; stdout holds the generated text alone.
text="$ROOT/experiments/tiny_text.toml"
"$BIN" init "$text" --output "$WORK/text_weights.safetensors" >/dev/null 2>&1
expect "generate writes only the text to stdout: 5 bytes and a newline" 0 "^ *6$" -- bash -c '"$0" generate "$1" \
  --weights "$2" --prompt "The " --max-new-tokens 5 --seed 1 2>/dev/null | wc -c' \
  "$BIN" "$text" "$WORK/text_weights.safetensors"

python3 - "$WORK" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
work = sys.argv[1]
weights = load_file(f"{work}/text_weights.safetensors")
weights["lm_head.weight"] = weights["backbone.embedding.weight"].copy()
save_file(weights, f"{work}/text_tied_head.safetensors")
PY
expect "generate reads a tied checkpoint that stores lm_head.weight, as forward does" 0 "^ *6$" -- bash -c '"$0" \
  generate "$1" --weights "$2" --prompt "The " --max-new-tokens 5 --greedy 2>/dev/null | wc -c' \
  "$BIN" "$text" "$WORK/text_tied_head.safetensors"

# effective.toml of a text run names its corpus by an absolute path, so it runs from any folder.
expect "effective.toml of a text run runs from another folder" 0 "wrote .*/text_again/summary.json" -- \
  bash -c '"$0" run "$1" --set training.steps=1 --set training.eval_batches=1 --out "$2/text_run" >/dev/null 2>&1 &&
  cd "$2" && "$0" run text_run/effective.toml --out "$2/text_again"' "$BIN" "$text" "$WORK"

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
