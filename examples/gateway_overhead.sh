#!/usr/bin/env bash
# The gateway's own overhead under load, against a floor measured in the same run: wrk sends the
# same chat completion straight to a fixed-answer endpoint (examples/fixed_completion.rs), then
# through tiergate to a system whose one tier is that endpoint (route gate, the remote call,
# accept gate, the durable ledger append), at 1, 8 and 64 connections. The difference is what
# tiergate adds.
#
#   bash examples/gateway_overhead.sh                      # SQLite
#   bash examples/gateway_overhead.sh postgres://postgres@127.0.0.1:5432/overhead   # an existing, empty database
#
# Needs wrk (Debian's package). Seconds per point: DURATION (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tiergate/target}"
database_url="${1:-}"
duration="${DURATION:-10}"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

# Built together with an example, the binary gets the same dependency features as `cargo test`
# (no second build of the dependencies).
cargo build --quiet --locked --bins --example fixed_completion
bin="$CARGO_TARGET_DIR/debug"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/examples/fixed_completion" --bind 127.0.0.1:9100 >"$work/fixed.log" 2>&1 &
mkdir -p "$work/cards"
cat >"$work/cards/fixed.yaml" <<'YAML'
kind: model-card
id: fixed-endpoint
name: fixed completion (examples/fixed_completion.rs)
runtime: {kind: openai-compatible, base_url: "http://127.0.0.1:9100/v1", model: fixed}
weights: {source: remote, sha256: "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}
cost: {per_1k_input_tokens: 0.01, per_1k_output_tokens: 0.02, currency: USD}
YAML
cat >"$work/cards/overhead.yaml" <<'YAML'
kind: system-card
id: overhead
purpose: the gateway's overhead against a fixed-answer endpoint
policy: tiergate-default@1
tiers:
  - {name: fixed, model: fixed-endpoint@1, decoding: {max_tokens: 16, temperature: 0.0}}
escalation: {min_mean_logprob: -1000.0}
YAML
token="$(python3 -c 'import secrets; print("tg_" + secrets.token_hex(8) + "." + secrets.token_urlsafe(32))')"
cat >"$work/config.yaml" <<YAML
bind: 127.0.0.1:9101
data_dir: $work/data
cards_dirs: [$work/cards]
policies_dir: policies
tier_concurrency: 256
tier_queue_depth: 4096
YAML
if [ -n "$database_url" ]; then echo "database_url: $database_url" >>"$work/config.yaml"; fi
TIERGATE_BOOTSTRAP_ADMIN_KEY="$token" "$bin/tiergate" serve --config "$work/config.yaml" >"$work/serve.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf localhost:9101/readyz >/dev/null && break; sleep 0.2; done
app_token="$(curl -sf localhost:9101/v1/keys -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"subject": "load", "roles": ["app"]}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model": "overhead", "messages": [{"role": "user", "content": "How do I reset my password?"}]}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("APP_TOKEN")
if token ~= nil and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
LUA

# p50, p99 (ms) and requests/s from wrk --latency.
measure() {
    local url="$1" connections="$2" token="$3"
    APP_TOKEN="$token" wrk -t"$(( connections < 2 ? 1 : 2 ))" -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "$url" >"$work/wrk.txt"
    python3 - "$work/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\b", text, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{ms('50%'):.2f} {ms('99%'):.2f} {rps:.0f} {non2xx.group(1) if non2xx else 0}")
PY
}

curl -sf localhost:9101/v1/chat/completions -H "Authorization: Bearer $app_token" -H 'content-type: application/json' \
    -d '{"model": "overhead", "messages": [{"role": "user", "content": "warm up"}]}' >/dev/null
echo "| connections | direct p50 / p99 ms | direct req/s | through tiergate p50 / p99 ms | tiergate req/s | added p50 / p99 ms | non-2xx |"
echo "|---|---|---|---|---|---|---|"
for connections in 1 8 64; do
    read -r d50 d99 drps _ < <(measure http://127.0.0.1:9100/v1/chat/completions "$connections" "")
    read -r t50 t99 trps bad < <(measure http://127.0.0.1:9101/v1/chat/completions "$connections" "$app_token")
    python3 -c "print(f'| $connections | $d50 / $d99 | $drps | $t50 / $t99 | $trps | {$t50 - $d50:.2f} / {$t99 - $d99:.2f} | $bad |')"
done
curl -sf localhost:9101/metrics -H "Authorization: Bearer $token" | grep -E '^tiergate_(policy_evaluation_seconds|ledger_commit_seconds|ledger_batch_entries)_(sum|count)' || true
