#!/usr/bin/env bash
# Fetch open-source code in more languages into a git-ignored folder (default data/sources).
#
#   scripts/fetch_sources.sh [DEST]
#
# Debian packages are downloaded with `apt-get download` and unpacked with `dpkg -x` (nothing is
# installed); npm packages with `npm pack`. Each package lands in DEST/<deb|npm>/<name>/, so
# `--source DEST/deb` gives one repo per package (licence in usr/share/doc/<name>/copyright for
# Debian, package/LICENSE* for npm). Re-running skips what is already there.
set -euo pipefail

DEST="${1:-data/sources}"
mkdir -p "$DEST/deb" "$DEST/npm" "$DEST/.cache"
DEST="$(cd "$DEST" && pwd)"

# language: package(s)
DEBS=(
  golang-1.19-src     # Go standard library (golang-src is only a metapackage)
  openjdk-17-source   # Java (JDK src.zip, with Javadoc)
  rust-src            # Rust standard library
  cmake-data          # CMake modules
  libruby3.1          # Ruby standard library
  perl-modules-5.36   # Perl modules
  lua-penlight        # Lua
  php-symfony-console php-twig  # PHP
  texlive-latex-base  # TeX
)
# JavaScript with JSDoc, and TypeScript packages that ship their .ts sources: enough packages
# per language that held-out pairs come from at least 5 of them (docs/data.md).
NPMS=(lodash @types/node rxjs express typescript
      async acorn yargs jquery ramda eslint underscore three moment webpack mocha handlebars
      immer @tanstack/query-core effect @effect/platform zod mobx @reduxjs/toolkit)

for pkg in "${DEBS[@]}"; do
  out="$DEST/deb/$pkg"
  [ -d "$out" ] && { echo "have deb $pkg"; continue; }
  (cd "$DEST/.cache" && apt-get download "$pkg" 2>/dev/null)
  deb="$(ls "$DEST/.cache/${pkg}"_*.deb | head -1)"
  mkdir -p "$out.tmp" && dpkg -x "$deb" "$out.tmp"
  # The JDK ships its sources as one zip: unpack it so the walker sees .java files.
  find "$out.tmp" -name src.zip -print0 | while IFS= read -r -d '' z; do
    python3 -m zipfile -e "$z" "$(dirname "$z")/src" && rm "$z"
  done
  mv "$out.tmp" "$out"
  echo "fetched deb $pkg"
done

for pkg in "${NPMS[@]}"; do
  name="${pkg//\//__}"; name="${name//@/}"
  out="$DEST/npm/$name"
  [ -d "$out" ] && { echo "have npm $pkg"; continue; }
  tgz="$(cd "$DEST/.cache" && npm pack --silent "$pkg" | tail -1)"
  mkdir -p "$out.tmp" && tar -xzf "$DEST/.cache/$tgz" -C "$out.tmp"
  mv "$out.tmp" "$out"
  echo "fetched npm $pkg"
done
du -sh "$DEST"/deb/* "$DEST"/npm/*
