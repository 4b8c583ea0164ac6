#!/bin/sh
# Makes the Debian 12 root that the systemd tests boot in a systemd-nspawn
# container: systemd as PID 1, journald, and the libraries ember links.
# Made once and kept; remade when this script changes.
#   scripts/nsroot.sh DIR
set -eu
dir=$1
stamp="$dir/.ember-nsroot"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi
# The mirror apt uses here, so that a machine that reaches only its own
# mirror can still bootstrap.
mirror=$(sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(http[^ ]*\) bookworm .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
pkgs=systemd,systemd-sysv,dbus,libjansson4,libpcre2-8-0,libutf8proc2,libfcgi0ldbl,liburing2
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
echo "nsroot: debootstrap bookworm from $mirror into $dir"
debootstrap --variant=minbase --include="$pkgs" bookworm "$dir.tmp" "$mirror" >"$dir.log" 2>&1 ||
	{ tail -n 20 "$dir.log"; rm -rf "$dir.tmp"; exit 1; }
mv "$dir.tmp" "$dir"
# No getty on a console nobody reads; the tests start what they need.
ln -sf /dev/null "$dir/etc/systemd/system/console-getty.service"
echo "$want" >"$stamp"
