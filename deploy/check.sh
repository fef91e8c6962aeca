#!/usr/bin/env bash
# Checks the deployment files with their own tools: the systemd units with
# systemd-analyze verify (in a scratch root holding the binaries where the
# units expect them), the Prometheus rules with promtool (from Debian's
# prometheus package, unpacked, not installed). Usage: deploy/check.sh BIN
set -euo pipefail
bin=${1:?usage: deploy/check.sh BIN}
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

if ! command -v systemd-analyze >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
	else
		echo "deploy/check.sh: no systemd-analyze (install systemd)" >&2
		exit 1
	fi
fi
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/bin"
for s in ingest prober cachekeeper console; do cp "$bin/$s" "$root/usr/local/bin/callout-$s"; done
cp "$bin/nats-server" "$root/usr/local/bin/nats-server"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp /bin/kill "$root/bin/kill"
cp "$here"/systemd/*.service "$root/etc/systemd/system/"
out=$(systemd-analyze verify --root="$root" "$root"/etc/systemd/system/*.service 2>&1) || { echo "$out"; exit 1; }
if echo "$out" | grep -q .; then
	echo "$out"
	echo "deploy/check.sh: systemd-analyze has remarks on the units" >&2
	exit 1
fi
echo "systemd units: ok ($(ls "$here"/systemd/*.service | wc -l))"

promtool=$bin/promtool
if [ ! -x "$promtool" ]; then
	dl=$(mktemp -d)
	(cd "$dl" && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; })
	dpkg -x "$dl"/prometheus_*.deb "$dl/root"
	cp "$dl/root/usr/bin/promtool" "$promtool"
	rm -rf "$dl"
fi
"$promtool" check rules "$here"/prometheus/*.yml
