#!/usr/bin/env bash
# Builds Debian's own Abseil (the source package of the installed libabsl-dev, 20220623 on
# Debian 12) with -fsanitize=thread into <repo>/.deps/absl-tsan: static libraries plus the CMake
# config files, which the `tsan` preset finds before the system's absl. Debian's libabsl is not
# instrumented, so without this TSan cannot see absl::Mutex/CondVar synchronization and reports
# thousands of false races (docs/reliability.md, "ThreadSanitizer").
#   scripts/build-absl-tsan.sh          # does nothing when already installed
#   JOBS=1 CXX=clang++ CC=clang scripts/build-absl-tsan.sh
# The compiler must be the one the tsan preset uses (default: cc/c++, i.e. gcc on Debian):
# gcc's and clang's TSan runtimes are different libraries. Needs root (or sudo) the first time, to
# add a deb-src line for the configured Debian mirror and run apt-get update.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREFIX="$ROOT/.deps/absl-tsan"
WORK="$ROOT/.deps/src/absl-tsan"
JOBS=${JOBS:-$(nproc)}
CC=${CC:-cc}
CXX=${CXX:-c++}
STAMP="$PREFIX/.kvasir-absl-tsan"
log() { echo "build-absl-tsan: $*"; }

compiler_id() { "$1" --version 2>/dev/null | head -n1; }
WANT_STAMP="compiler=$(compiler_id "$CXX")"

if [ -f "$STAMP" ] && [ -f "$PREFIX/lib/cmake/absl/abslConfig.cmake" ]; then
  if grep -qxF "$WANT_STAMP" "$STAMP"; then
    log "already installed in $PREFIX ($(head -n1 "$STAMP"))"
    exit 0
  fi
  log "installed copy was built with another compiler; rebuilding"
  rm -rf "$PREFIX"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# Tools: dpkg-source (dpkg-dev) for apt-get source, CMake and Ninja for the build.
missing=()
for p in dpkg-dev cmake ninja-build build-essential; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# A deb-src line for the Debian suites apt already uses (same mirror, same suites).
# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
# shellcheck disable=SC2016  # $(IDENTIFIER) is apt's field name, not a shell expansion
targets=$(apt-get indextargets --format '$(IDENTIFIER)' 2>/dev/null || true)
if ! grep -qx Sources <<<"$targets"; then
  src_file=/etc/apt/sources.list.d/kvasir-deb-src.sources
  log "no deb-src entry configured; writing $src_file"
  tmp=$(mktemp)
  # deb822 files: a deb-src copy of every "Types: deb" stanza that names this release's suites.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v codename="$codename" '
      function flush() {
        if (n && deb && suites) { for (i = 1; i <= n; i++) print lines[i]; print "" }
        n = 0; deb = 0; suites = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^#/ { next }
      /^Types:/ { if ($0 ~ /[[:space:]]deb([[:space:]]|$)/) deb = 1; lines[++n] = "Types: deb-src"; next }
      /^Suites:/ { if (index($0, codename)) suites = 1 }
      { lines[++n] = $0 }
      END { flush() }' "$f" >>"$tmp"
  done
  # One-line format (/etc/apt/sources.list, *.list): "deb [opts] URI SUITE COMPONENTS...".
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v codename="$codename" '$1 == "deb" {
      i = 2; opts = ""
      if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
      if (index($(i + 1), codename) != 1) next
      printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents:", $i, $(i + 1)
      for (j = i + 2; j <= NF; j++) printf " %s", $j
      if (opts ~ /signed-by=/) { sub(/.*signed-by=/, "", opts); sub(/[] ].*/, "", opts)
        printf "\nSigned-By: %s", opts }
      printf "\n\n" }' "$f" >>"$tmp"
  done
  if ! grep -q '^URIs:' "$tmp"; then
    log "could not derive a deb-src entry from the apt sources; using deb.debian.org"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb-src\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$codename" "$codename" "$codename" >"$tmp"
  fi
  $SUDO install -m 0644 "$tmp" "$src_file"
  rm -f "$tmp"
fi

log "apt-get update"
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The source of the installed libabsl-dev when there is one, so headers and ABI options match.
version=$(dpkg-query -W -f='${source:Version}' libabsl-dev 2>/dev/null || true)
spec="abseil${version:+=$version}"
rm -rf "$WORK"
mkdir -p "$WORK"
log "apt-get source $spec (into $WORK)"
if ! (cd "$WORK" && apt-get source -qq "$spec" >/dev/null 2>"$WORK/apt-source.log"); then
  # The mirror may carry only a newer revision than the installed one: take its abseil.
  [ "$spec" != abseil ] && log "$spec is not on the mirror; trying the mirror's abseil"
  (cd "$WORK" && apt-get source -qq abseil >/dev/null 2>>"$WORK/apt-source.log") || {
    cat "$WORK/apt-source.log" >&2
    exit 1
  }
fi
src=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'abseil-*' | head -n1)
[ -n "$src" ] || { log "apt-get source produced no abseil-* folder"; exit 1; }
log "source: $src (Debian patches applied by dpkg-source)"

flags="-fsanitize=thread -fno-omit-frame-pointer -g"
log "configuring with $(compiler_id "$CXX"), flags: $flags"
cmake -S "$src" -B "$WORK/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_SHARED_LIBS=OFF \
  -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF -DABSL_ENABLE_INSTALL=ON \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib >"$WORK/configure.log" 2>&1 || {
  cat "$WORK/configure.log" >&2
  exit 1
}

log "building with $JOBS jobs (about 180 files; a few minutes per core); log: $WORK/build.log"
if ! cmake --build "$WORK/build" -j "$JOBS" 2>&1 | tee "$WORK/build.log" | awk '
  /^\[[0-9]+\/[0-9]+\]/ { split(substr($1, 2), a, "/")
    if (a[1] % 25 == 0 || a[1] == a[2]) { printf "build-absl-tsan:   %d/%d\n", a[1], a[2]; fflush() } }'; then
  tail -n 40 "$WORK/build.log" >&2
  log "build failed; full log: $WORK/build.log"
  exit 1
fi

log "installing into $PREFIX"
cmake --install "$WORK/build" >/dev/null
{
  echo "$WANT_STAMP"
  echo "source=$(basename "$src") flags=$flags"
} >"$STAMP"
rm -rf "$WORK"
rmdir "$ROOT/.deps/src" 2>/dev/null || true
log "done: $(find "$PREFIX/lib" -name 'libabsl_*.a' | wc -l) instrumented libraries in $PREFIX"
