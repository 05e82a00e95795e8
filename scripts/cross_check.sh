#!/usr/bin/env bash
# Cross-check `mamba-r1 forward` against the independent float64 NumPy reference
# (scripts/reference_model.py) on a table of small configs.
#
#   scripts/cross_check.sh [BUILD_DIR] [--backend cpu|cuda] [--no-backward]
#                          [--only NAME[,NAME]] [--keep] [--reference-only]
#
# For each config (written below as a small TOML file in a temp dir) it runs
#   1. scripts/reference_model.py CFG --out DIR ...   weights, input, expected
#   2. BUILD_DIR/mamba-r1 forward CFG --weights W --input I --output O [--backend B]
#      and compares `hidden` (and `logits` when vocab_size > 0);
#   3. when vocab_size > 0 (unless --no-backward), the same with --backward, and
#      compares `loss` too (the LM loss of DESIGN.md §2, aux losses included).
# BUILD_DIR defaults to build.  --reference-only runs the reference's own
# self-test and generates every case without calling the binary (for use while
# the C++ side does not exist yet).  --keep keeps the temp dir.
#
# Tolerances (elementwise |a − e| <= atol + rtol·|e|, compare_safetensors.py):
#   hidden, logits: atol 1e-4, rtol 1e-3.  hidden is after norm_f, so O(1);
#     float32 has a unit roundoff of 6e-8, and the dot products (≤ 256 terms),
#     the length-L sequential scan and a few residual blocks grow that to about
#     1e-6..1e-5 relative, so this leaves 10-100× headroom (also for CUDA's
#     other summation orders) while any wrong equation (a missing bias, a
#     shifted conv tap, a wrong norm eps with the small-input case, a wrong
#     routing decision) gives errors of 1e-3..1e-1.
#   loss: atol 1e-5, rtol 1e-5: a mean of B·L log-softmax terms of O(1) plus
#     aux losses of O(1e-2); float32 gets it to ~1e-7..1e-6 relative.
# The exit status is non-zero when any comparison or run fails.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"

BUILD_DIR=""
BACKEND=""
BACKWARD=1
KEEP=0
ONLY=""
REFERENCE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND="$2"; shift 2 ;;
    --backend=*) BACKEND="${1#*=}"; shift ;;
    --no-backward) BACKWARD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --only=*) ONLY="${1#*=}"; shift ;;
    --reference-only) REFERENCE_ONLY=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "cross_check: unknown option $1" >&2; exit 2 ;;
    *) BUILD_DIR="$1"; shift ;;
  esac
done
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$PWD/$BUILD_DIR" ;; esac
BIN="$BUILD_DIR/mamba-r1"

HIDDEN_TOL=(--atol 1e-4 --rtol 1e-3)
LOSS_TOL=(--atol 1e-5 --rtol 1e-5)

# Python dependencies (numpy, safetensors)
if ! "$PYTHON" -c "import numpy, safetensors" 2>/dev/null; then
  echo "cross_check: installing scripts/requirements-reference.txt"
  "$PYTHON" -m pip install -q -r "$ROOT/scripts/requirements-reference.txt" || {
    echo "cross_check: pip install failed" >&2; exit 2; }
fi

if [ "$REFERENCE_ONLY" = 0 ] && [ ! -x "$BIN" ]; then
  echo "cross_check: $BIN not found or not executable (build first, or pass BUILD_DIR," \
       "or use --reference-only)" >&2
  exit 2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mamba-r1-cross-check.XXXXXX")"
if [ "$KEEP" = 1 ]; then echo "cross_check: keeping $TMP"; else trap 'rm -rf "$TMP"' EXIT; fi

# ---------------------------------------------------------------- the configs
# add_case NAME "REFERENCE ARGS" <<TOML
NAMES=()
declare -A REFARGS
add_case() {
  NAMES+=("$1")
  REFARGS[$1]="$2"
  cat > "$TMP/$1.toml"
}

# token input, learned positions, switch MoE, rmsnorm, tied head (most defaults)
add_case tok_learned_switch "--seed 1 --batch 2 --length 16" <<'EOF'
[model]
dim = 32
depth = 2
d_state = 8
num_experts = 4
expert_dim = 64
max_seq_len = 32
vocab_size = 64
EOF

# embeddings input, rotary, layernorm
add_case emb_rotary_layernorm "--seed 2 --batch 2 --length 16" <<'EOF'
[model]
dim = 32
depth = 2
order = ["mamba", "moe"]
d_state = 8
num_experts = 4
expert_dim = 48
max_seq_len = 16
vocab_size = 0
norm = "layernorm"
positional = ["rotary"]
EOF

# three kinds of block, no norms, learned then rotary, capacity_factor 0 (no dropping)
add_case mamba_mlp_moe_nonorm "--seed 3 --batch 2 --length 12" <<'EOF'
[model]
dim = 32
depth = 1
order = ["mamba", "mlp", "moe"]
d_state = 6
num_experts = 3
expert_dim = 40
max_seq_len = 20
vocab_size = 0
norm = "none"
positional = ["learned", "rotary"]

[router]
capacity_factor = 0.0
EOF

# capacity_factor 0.5: tokens are dropped; z-loss on
add_case capacity_drop "--seed 4 --batch 3 --length 16" <<'EOF'
[model]
dim = 32
depth = 2
d_state = 8
num_experts = 4
expert_dim = 32
max_seq_len = 16
vocab_size = 64

[router]
name = "switch"
capacity_factor = 0.5
min_capacity = 1
aux_loss_coef = 0.02
z_loss_coef = 0.001
EOF

# min_capacity larger than floor(capacity_factor·T/X)
add_case min_capacity_wins "--seed 5 --batch 2 --length 16" <<'EOF'
[model]
dim = 32
depth = 1
d_state = 4
num_experts = 4
expert_dim = 32
max_seq_len = 16
vocab_size = 40

[router]
capacity_factor = 0.25
min_capacity = 5
EOF

# untied lm_head, explicit dt_rank, d_conv 3, expand 1, layernorm
add_case untied_head "--seed 6 --batch 2 --length 14" <<'EOF'
[model]
dim = 32
depth = 2
d_state = 8
d_conv = 3
expand = 1
dt_rank = 3
num_experts = 2
expert_dim = 32
max_seq_len = 24
vocab_size = 48
norm = "layernorm"
positional = ["rotary", "learned"]
tie_embeddings = false
EOF

# odd sizes (dt_rank auto = 2), no mask in the input, capacity_factor 1.25
add_case odd_sizes_nomask "--seed 7 --batch 3 --length 11 --no-mask" <<'EOF'
[model]
dim = 24
depth = 2
d_state = 5
d_conv = 2
num_experts = 3
expert_dim = 40
max_seq_len = 11
vocab_size = 0

[router]
capacity_factor = 1.25
EOF

# small residual stream (embedding table and pos_emb × 0.01): the norms' eps shows
add_case small_input_eps "--seed 8 --batch 2 --length 16 --input-scale 0.01" <<'EOF'
[model]
dim = 32
depth = 1
order = ["mamba", "mlp"]
d_state = 8
num_experts = 2
expert_dim = 32
max_seq_len = 16
vocab_size = 32
EOF

# a deeper one: 8 blocks, longer sequence
add_case deeper "--seed 9 --batch 2 --length 40" <<'EOF'
[model]
dim = 64
depth = 4
d_state = 16
num_experts = 4
expert_dim = 96
max_seq_len = 64
vocab_size = 0
EOF

# per-block keys ([model.layers.i]): a mamba block with its own d_state, d_conv, expand and dt_rank; a
# moe block with more experts of another width and a router with its own capacity and aux coefficient
add_case per_block_keys "--seed 10 --batch 2 --length 16" <<'EOF'
[model]
dim = 32
depth = 2
d_state = 8
num_experts = 4
expert_dim = 48
max_seq_len = 16
vocab_size = 40

[model.layers.2]
d_state = 12
d_conv = 2
expand = 1
dt_rank = 5

[model.layers.3]
num_experts = 6
expert_dim = 20

[model.layers.3.router]
capacity_factor = 0.5
aux_loss_coef = 0.05

[router]
capacity_factor = 1.5
min_capacity = 1
EOF

# ---------------------------------------------------------------- running
FAIL=0
SUMMARY="$TMP/summary.tsv"
: > "$SUMMARY"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$SUMMARY"; }

if [ "$REFERENCE_ONLY" = 1 ]; then
  if "$PYTHON" "$ROOT/scripts/reference_model.py" --self-test > "$TMP/selftest.log" 2>&1; then
    row "(self-test)" "-" "-" "-" "-" "PASS"
  else
    cat "$TMP/selftest.log"; row "(self-test)" "-" "-" "-" "-" "FAIL"; FAIL=1
  fi
fi

for name in "${NAMES[@]}"; do
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  cfg="$TMP/$name.toml"
  dir="$TMP/$name"
  # shellcheck disable=SC2086
  if ! "$PYTHON" "$ROOT/scripts/reference_model.py" "$cfg" --out "$dir" --quiet ${REFARGS[$name]} \
       > "$dir.ref.log" 2>&1; then
    row "$name" "-" "-" "-" "-" "FAIL (reference: $(tail -n 1 "$dir.ref.log"))"; FAIL=1; continue
  fi
  if grep -q warning "$dir.ref.log"; then sed 's/^/  /' "$dir.ref.log"; fi
  vocab=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['dims']['V'])" "$dir/meta.json")
  if [ "$REFERENCE_ONLY" = 1 ]; then
    row "$name" "(reference only)" "-" "-" "-" "generated"
    continue
  fi
  names="hidden"; [ "$vocab" -gt 0 ] && names="hidden,logits"
  extra=(); [ -n "$BACKEND" ] && extra=(--backend "$BACKEND")

  # forward
  if "$BIN" forward "$cfg" --weights "$dir/weights.safetensors" --input "$dir/input.safetensors" \
       --output "$dir/actual.safetensors" "${extra[@]}" > "$dir.fwd.log" 2>&1; then
    "$PYTHON" "$ROOT/scripts/compare_safetensors.py" "$dir/expected.safetensors" \
      "$dir/actual.safetensors" --names "$names" "${HIDDEN_TOL[@]}" --label "$name" --no-header \
      >> "$SUMMARY" 2> "$dir.cmp.log" || FAIL=1
    [ -s "$dir.cmp.log" ] && row "$name" "-" "-" "-" "-" "FAIL ($(tail -n 1 "$dir.cmp.log"))"
  else
    rc=$?
    row "$name" "forward" "-" "-" "-" "FAIL (rc=$rc: $(tail -n 1 "$dir.fwd.log" | cut -c1-120))"
    FAIL=1
  fi

  # forward --backward: the loss
  if [ "$vocab" -gt 0 ] && [ "$BACKWARD" = 1 ]; then
    if "$BIN" forward "$cfg" --weights "$dir/weights.safetensors" --input "$dir/input.safetensors" \
         --output "$dir/actual_bwd.safetensors" --backward "${extra[@]}" > "$dir.bwd.log" 2>&1; then
      "$PYTHON" "$ROOT/scripts/compare_safetensors.py" "$dir/expected.safetensors" \
        "$dir/actual_bwd.safetensors" --names loss "${LOSS_TOL[@]}" --label "$name" --no-header \
        >> "$SUMMARY" 2> "$dir.cmp2.log" || FAIL=1
      [ -s "$dir.cmp2.log" ] && row "$name" "-" "-" "-" "-" "FAIL ($(tail -n 1 "$dir.cmp2.log"))"
    else
      rc=$?
      row "$name" "forward --backward" "-" "-" "-" "FAIL (rc=$rc: $(tail -n 1 "$dir.bwd.log" | cut -c1-120))"
      FAIL=1
    fi
  fi
done

# ---------------------------------------------------------------- summary
echo
echo "cross-check of ${BIN}${BACKEND:+ (backend $BACKEND)} against scripts/reference_model.py"
echo "tolerances: hidden/logits atol 1e-4 rtol 1e-3; loss atol 1e-5 rtol 1e-5"
{ printf 'config\ttensor\tshape\tmax|a-e|\tnmse\tresult\n'; cat "$SUMMARY"; } | column -t -s $'\t'
npass=$(grep -c -P '\tPASS$|\tgenerated$' "$SUMMARY" || true)
nfail=$(grep -c -P '\tFAIL' "$SUMMARY" || true)
echo
echo "cross-check: $npass passed, $nfail failed"
if [ "$FAIL" != 0 ] || [ "$nfail" != 0 ]; then
  [ "$KEEP" = 1 ] || echo "(rerun with --keep to keep the files and logs)"
  exit 1
fi
exit 0
