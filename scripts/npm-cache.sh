# Sourced by the fetch scripts: npm_cached PKG TGZ packs npm package PKG
# (name@version) into TGZ under build/npm unless it is there, so that a
# second run needs no network.
npm_cached() {
	mkdir -p "$(dirname "$2")"
	if [ ! -f "$2" ]; then
		(cd "$(dirname "$2")" && npm pack --silent "$1" >/dev/null)
	fi
}
