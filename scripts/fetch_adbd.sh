#!/usr/bin/env bash
# Fetch Debian trixie's `adbd` (the AOSP daemon) and its runtime closure into DEST without installing anything.
#
# adbd needs trixie's glibc, so it is not installed: a private apt configuration (own sources list naming trixie on
# the mirror host this machine already uses, own lists/cache dirs, an empty dpkg status so apt resolves the whole
# closure) downloads the .debs, and `dpkg-deb -x` unpacks them into DEST. The machine's own apt sources, lists and
# dpkg database are never touched. Tests start DEST/usr/lib/android-sdk/platform-tools/adbd through trixie's loader
# DEST/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 (see tests/real_adbd/).
#
# Usage: scripts/fetch_adbd.sh DEST      (idempotent: does nothing if DEST already holds a working adbd)
set -euo pipefail

log() { printf '[fetch_adbd] %s\n' "$*" >&2; }

DEST=${1:?usage: $0 DEST}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
LIBDIR="$DEST/usr/lib/x86_64-linux-gnu"
LOADER="$LIBDIR/ld-linux-x86-64.so.2"
ADBD="$DEST/usr/lib/android-sdk/platform-tools/adbd"

works() {
  # adbd has no --version; resolving its libraries through trixie's loader is the check that it can start.
  [ -x "$ADBD" ] && [ -e "$LOADER" ] &&
    "$LOADER" --library-path "$LIBDIR/android:$LIBDIR" --list "$ADBD" >/dev/null 2>&1
}

if works; then
  log "adbd already in $DEST"
  exit 0
fi

if [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ]; then
  log "this script fetches the amd64 build; $(dpkg --print-architecture 2>/dev/null || echo this machine) is not supported"
  exit 1
fi

# The mirror host of the machine's own Debian sources (deb822 URIs: or one-line deb entries), else deb.debian.org.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
  grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
mirror=${mirror%/}
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch_adbd.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc/preferences.d" "$work/debs" "$work/log"
: > "$work/status"
echo "deb [signed-by=$keyring] $mirror trixie main" > "$work/sources.list"
opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=$work/empty.d"
  -o "Dir::Etc::Preferences=$work/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::State::status=$work/status"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Log=$work/log"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures::=amd64"
  -o "APT::Get::List-Cleanup=false"
  -o "Debug::NoLocking=true"
  -o "APT::Sandbox::User=root"
)
mkdir -p "$work/empty.d"

log "reading the trixie package list from $mirror (private apt config in $work)"
apt-get "${opts[@]}" -qq update

# The runtime closure: Depends and PreDepends, recursively (the empty status file means nothing counts as installed).
pkgs=$(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances adbd | grep -E '^[a-z0-9]' | sort -u)
log "downloading $(echo "$pkgs" | wc -w) packages: $(echo $pkgs)"
(cd "$work/debs" && apt-get "${opts[@]}" -qq download $pkgs)

for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$DEST"
done
ls "$work/debs" > "$DEST/.fetched-packages"

if works; then
  log "adbd ready: $ADBD (start it through $LOADER)"
else
  log "unpacked into $DEST but adbd's libraries do not resolve; see: $LOADER --library-path $LIBDIR/android:$LIBDIR --list $ADBD"
  exit 1
fi
