#!/bin/sh
# Requests per second for GET /health through Caddy to ember-worker, beside
# php-fpm answering a one-line PHP script through the same Caddy, in one
# run: wrk with 64 connections, each side measured twice, alternating.
#   scripts/bench_http.sh BUILD_DIR   (BENCH_SECONDS=10)
set -eu
build=${1:-build}
secs=${BENCH_SECONDS:-10}
dir=$(mktemp -d /tmp/ember-bench-http.XXXXXX)
chmod 755 "$dir"
pids=""
stop() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

fpm=$(command -v php-fpm8.2 || command -v php-fpm || ls /usr/sbin/php-fpm* 2>/dev/null | head -n 1)
[ -n "$fpm" ] || { echo "bench-http: php-fpm is missing (make deps)"; exit 1; }
port_e=$((20000 + $$ % 10000))
port_p=$((port_e + 1))

"$build/ember-worker" --model "$build/models/tiny-qwen2" --listen "$dir/ember.sock" \
	--listen-mode 0666 --threads 1 2>"$dir/worker.log" &
pids="$pids $!"

echo '<?php echo "{\"status\":\"ok\"}\n";' >"$dir/health.php"
# As many php-fpm children as ember-worker has request threads (--slots 4 +
# --queue 16), both answering every connection Caddy opens.
cat >"$dir/php-fpm.conf" <<CONF
[global]
pid = $dir/php-fpm.pid
error_log = $dir/php-fpm.log
daemonize = no
[bench]
listen = $dir/php.sock
listen.mode = 0666
pm = static
pm.max_children = 20
CONF
"$fpm" -n -y "$dir/php-fpm.conf" -R -F &
pids="$pids $!"

# One Caddy, two sites, the same FastCGI transport settings as units/Caddyfile.
cat >"$dir/Caddyfile" <<CONF
{
	admin off
}
http://127.0.0.1:$port_e {
	reverse_proxy unix/$dir/ember.sock {
		transport fastcgi
		flush_interval -1
	}
}
http://127.0.0.1:$port_p {
	reverse_proxy unix/$dir/php.sock {
		transport fastcgi {
			env SCRIPT_FILENAME $dir/health.php
		}
		flush_interval -1
	}
}
CONF
XDG_DATA_HOME=$dir XDG_CONFIG_HOME=$dir caddy run --config "$dir/Caddyfile" --adapter caddyfile \
	>"$dir/caddy.log" 2>&1 &
pids="$pids $!"

for url in "http://127.0.0.1:$port_e/health" "http://127.0.0.1:$port_p/health"; do
	i=0
	until curl -sf "$url" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -le 100 ] || { echo "bench-http: $url never answered"; tail "$dir"/*.log; exit 1; }
		sleep 0.1
	done
done

rps() {
	wrk -t2 -c64 -d"${secs}s" "$1" | awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "non-2xx " $0 > "/dev/stderr"}'
}
e1=$(rps "http://127.0.0.1:$port_e/health")
p1=$(rps "http://127.0.0.1:$port_p/health")
e2=$(rps "http://127.0.0.1:$port_e/health")
p2=$(rps "http://127.0.0.1:$port_p/health")
echo "GET /health through Caddy, wrk -c64 ${secs}s, twice each:"
echo "  ember-worker: $e1 $e2 req/s"
echo "  php-fpm:      $p1 $p2 req/s (one-line PHP script)"
awk -v a="$e1" -v b="$e2" -v c="$p1" -v d="$p2" \
	'BEGIN { printf "  ratio ember / php-fpm: %.2f\n", (a + b) / (c + d) }'
