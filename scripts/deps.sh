#!/bin/sh
# Installs the Debian packages that ember's build, tests and demo need, and
# only those that are missing: `make deps` runs this before anything else.
set -eu

# compiler and build, engine libraries (JSON, regexes, Unicode), npm for the
# tokenizer packages and the reference tokenizer, git for the chat templates'
# source bundle, clang for fuzzing
PKGS="gcc make libc6-dev pkg-config libjansson-dev libpcre2-dev libutf8proc-dev nodejs npm ca-certificates coreutils git"
PKGS="$PKGS clang libclang-rt-14-dev"
# the worker: FastCGI, journald; the supervisor: io_uring; the front ends and tools the integration
# tests and benchmarks start: Caddy, Apache httpd, nginx, php-fpm, wrk, curl,
# promtool (prometheus), spawn-fcgi and cgi-fcgi (libfcgi-bin), systemd-socket-activate
# and systemd-analyze (systemd), pgrep (procps); a Debian root and systemd-nspawn
# to boot systemd in a container (debootstrap, systemd-container)
PKGS="$PKGS libfcgi-dev libsystemd-dev liburing-dev caddy apache2-bin nginx-light php-fpm wrk curl prometheus spawn-fcgi libfcgi-bin systemd procps"
PKGS="$PKGS debootstrap systemd-container"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
# npm may come from elsewhere than Debian's package (e.g. nodesource): accept any.
case " $missing " in *" npm "*) command -v npm >/dev/null 2>&1 && missing=$(echo "$missing" | sed 's/ npm//');; esac
case " $missing " in *" nodejs "*) command -v node >/dev/null 2>&1 && missing=$(echo "$missing" | sed 's/ nodejs//');; esac

[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
