#!/bin/sh
# `make run`: the tiny test model served by emberd, socket-activated by
# systemd-socket-activate (emberd starts on the first connection, then its
# first worker), behind Caddy on 127.0.0.1 with units/Caddyfile as it is;
# prints a curl command that works, sends one streamed request, and stays
# up until Ctrl-C.
#   scripts/run-demo.sh BUILD_DIR   (EMBER_DEMO_ADDR=127.0.0.1:8080,
#                                    EMBER_DEMO_ONCE=1 to stop after the request)
set -eu
build=${1:-build}
addr=${EMBER_DEMO_ADDR:-127.0.0.1:8080}
run=$build/run
mkdir -p "$run"
run=$(cd "$run" && pwd)
sock=$run/ember.sock

pids=""
stop() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

rm -f "$sock"
systemd-socket-activate -l "$sock" "$build/emberd" --model "$build/models/tiny-qwen2" \
	--max-workers 2 --idle-timeout 60 2>"$run/emberd.log" &
pids="$pids $!"
EMBER_SITE="http://$addr" EMBER_UPSTREAM="unix/$sock" CADDY_ADMIN=off \
	XDG_DATA_HOME="$run" XDG_CONFIG_HOME="$run" \
	caddy run --config units/Caddyfile --adapter caddyfile >"$run/caddy.log" 2>&1 &
pids="$pids $!"

i=0
until curl -sf "http://$addr/health" >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 100 ]; then
		echo "run: the demo did not come up; logs:" >&2
		tail -n 5 "$run/emberd.log" "$run/caddy.log" >&2
		exit 1
	fi
	sleep 0.1
done

cat <<MSG
ember is answering on http://$addr (Caddy -> FastCGI -> emberd's workers, model
tiny-qwen2: random weights, so the words make no sense). Try:

  curl http://$addr/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "tiny-qwen2", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}'

A streamed request, as an OpenAI client sends it:
MSG
curl -sN "http://$addr/v1/chat/completions" -H 'Content-Type: application/json' \
	-d '{"model": "tiny-qwen2", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "stream": true, "seed": 1}'
echo
echo "Logs: $run/emberd.log (emberd and its workers), $run/caddy.log. Metrics: curl http://$addr/metrics"
[ "${EMBER_DEMO_ONCE:-0}" = 1 ] && exit 0
echo "Ctrl-C stops the demo."
wait
