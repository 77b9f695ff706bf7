#!/usr/bin/env bash
# Fetch open-source code in more languages into a git-ignored folder (default data/sources).
#
#   scripts/fetch_sources.sh [DEST] [PACKAGE ...]     # e.g. scripts/fetch_sources.sh /tmp/s acorn
#   scripts/fetch_sources.sh [DEST] --manifest-only   # fetch nothing, record what DEST holds
#
# Debian packages are downloaded with `apt-get download` and unpacked with `dpkg -x` (nothing is
# installed); npm packages with `npm pack`. Each package lands in DEST/<deb|npm>/<name>/, so
# `--source DEST/deb` gives one repo per package (licence in usr/share/doc/<name>/copyright for
# Debian, package/LICENSE* for npm). Re-running skips what is already there; PACKAGE names limit
# the fetch to those of the lists below. Every version is pinned, so two builds of one commit
# read the same code, and DEST/manifest.json records, for every package DEST holds (fetched now
# or before), its version, the pin, the downloaded archive (kept in DEST/.cache) and its SHA-256;
# `python -m train.prepare_corpus --fetched DEST` copies it into the build's summary.json.
set -euo pipefail

DEST="data/sources"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then DEST="$1"; shift; fi
MANIFEST_ONLY=0
ONLY=()
for arg in "$@"; do
  if [ "$arg" = --manifest-only ]; then MANIFEST_ONLY=1; else ONLY+=("$arg"); fi
done
mkdir -p "$DEST/deb" "$DEST/npm" "$DEST/.cache"
DEST="$(cd "$DEST" && pwd)"

# language: package=version. The bookworm versions apt resolved for the build of docs/data.md,
# pinned with `apt-get download pkg=VERSION`. deb.debian.org keeps only a suite's current
# version: once a point release or security update replaces one of these (openjdk, perl, ruby
# and php get such updates), the pinned version is gone from it (snapshot.debian.org keeps it)
# and pinning it would make the fetch fail. So a pinned version apt no longer has is fetched at
# apt's candidate instead, with a warning, and the manifest records the version fetched.
DEBS=(
  golang-1.19-src=1.19.8-2              # Go standard library (golang-src is a metapackage)
  openjdk-17-source=17.0.19+10-1~deb12u2  # Java (JDK src.zip, with Javadoc)
  rust-src=1.63.0+dfsg1-2               # Rust standard library
  cmake-data=3.25.1-1                   # CMake modules
  libruby3.1=3.1.2-7+deb12u1            # Ruby standard library
  perl-modules-5.36=5.36.0-7+deb12u3    # Perl modules
  lua-penlight=1.13.1-3                 # Lua
  php-symfony-console=5.4.53+dfsg-0+deb12u1 php-twig=3.5.1-1+deb12u3  # PHP
  texlive-latex-base=2022.20230122-3    # TeX
)
# JavaScript with JSDoc, and TypeScript packages that ship their .ts sources: enough packages
# per language that held-out pairs come from at least 5 of them (docs/data.md). npm keeps every
# published version, so these exact pins hold.
NPMS=(lodash@4.18.1 @types/node@26.6.11 rxjs@7.8.2 express@5.3.0 typescript@7.0.2
      async@3.2.6 acorn@8.19.0 yargs@18.2.0 jquery@4.1.0 ramda@0.32.0 eslint@10.16.0
      underscore@1.13.8 three@0.187.0 moment@2.31.0 webpack@5.113.0 mocha@12.0.3
      handlebars@4.7.10 immer@11.2.14 @tanstack/query-core@5.108.4 effect@4.1.5
      @effect/platform@0.97.2 zod@4.6.7 mobx@7.1.3 @reduxjs/toolkit@2.16.0)

known=" ${DEBS[*]%%=*} "
for spec in "${NPMS[@]}"; do known+="${spec%@*} "; done
for pkg in "${ONLY[@]}"; do
  [[ "$known" == *" $pkg "* ]] || { echo "error: $pkg is not a package of $0" >&2; exit 2; }
done
wanted() {  # fetch $1? (all of them, unless PACKAGE names or --manifest-only say otherwise)
  [ "$MANIFEST_ONLY" = 1 ] && return 1
  [ ${#ONLY[@]} -eq 0 ] && return 0
  [[ " ${ONLY[*]} " == *" $1 "* ]]
}

for spec in "${DEBS[@]}"; do
  pkg="${spec%%=*}" version="${spec#*=}"
  wanted "$pkg" || continue
  out="$DEST/deb/$pkg"
  [ -d "$out" ] && { echo "have deb $pkg"; continue; }
  rm -f "$DEST/.cache/${pkg}"_*.deb  # one archive per package: the one the manifest hashes
  if ! (cd "$DEST/.cache" && apt-get download "$pkg=$version" 2>/dev/null); then
    echo "warning: apt has no $pkg $version any more: fetching its candidate" >&2
    (cd "$DEST/.cache" && apt-get download "$pkg" 2>/dev/null)
  fi
  deb="$(ls "$DEST/.cache/${pkg}"_*.deb | head -1)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp" && dpkg -x "$deb" "$out.tmp"
  # The JDK ships its sources as one zip: unpack it so the walker sees .java files.
  find "$out.tmp" -name src.zip -print0 | while IFS= read -r -d '' z; do
    python3 -m zipfile -e "$z" "$(dirname "$z")/src" && rm "$z"
  done
  mv "$out.tmp" "$out"
  echo "fetched deb $pkg"
done

for spec in "${NPMS[@]}"; do
  pkg="${spec%@*}" version="${spec##*@}"
  wanted "$pkg" || continue
  name="${pkg//\//__}"; name="${name//@/}"
  out="$DEST/npm/$name"
  [ -d "$out" ] && { echo "have npm $pkg"; continue; }
  tgz="$(cd "$DEST/.cache" && npm pack --silent "$pkg@$version" | tail -1)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp" && tar -xzf "$DEST/.cache/$tgz" -C "$out.tmp"
  mv "$out.tmp" "$out"
  echo "fetched npm $pkg"
done

# The manifest of what DEST holds, from the unpacked folders and the cached archives.
python3 - "$DEST" "${DEBS[@]}" -- "${NPMS[@]}" <<'PY'
import datetime, hashlib, json, os, pathlib, subprocess, sys

dest, args = pathlib.Path(sys.argv[1]), sys.argv[2:]
cut = args.index("--")
pins = {("deb", s.partition("=")[0]): s.partition("=")[2] for s in args[:cut]}
pins |= {("npm", s.rpartition("@")[0]): s.rpartition("@")[2] for s in args[cut + 1:]}
cache = dest / ".cache"


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def apt_origin(pkg, version):
    """Where apt resolves `version` of `pkg` from ("URL suite/component"), "" if it has not."""
    lines, found = run("apt-cache", "policy", pkg).splitlines(), False
    for line in lines:
        words = line.replace("***", "").split()
        if len(words) == 2 and not words[0].isdigit():  # a version row: "VERSION PRIORITY"
            found = words[0] == version
        elif found and len(words) >= 3 and words[0].isdigit() and "://" in words[1]:
            return f"{words[1]} {words[2]}"
    return ""


def deb_row(folder):
    pkg = folder.name
    archives = sorted(cache.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    versions = {p: run("dpkg-deb", "-f", str(p), "Version") for p in archives}
    pinned = [p for p in archives if versions[p] == pins.get(("deb", pkg))]
    archive = (pinned or archives or [None])[-1]
    version = versions.get(archive, "")
    return {"kind": "deb", "name": pkg, "version": version, "archive": archive,
            "origin": apt_origin(pkg, version) if version else ""}


def npm_row(folder):
    meta = json.loads(next(folder.glob("*/package.json")).read_text())
    archive = cache / f"{meta['name'].lstrip('@').replace('/', '-')}-{meta['version']}.tgz"
    return {"kind": "npm", "name": meta["name"], "version": meta["version"],
            "archive": archive if archive.is_file() else None, "origin": registry}


registry = run("npm", "config", "get", "registry")
rows = []
for kind, make in (("deb", deb_row), ("npm", npm_row)):
    for folder in sorted(p for p in (dest / kind).iterdir()
                         if p.is_dir() and p.suffix != ".tmp"):
        row = make(folder)
        archive = row.pop("archive")
        row.update(dir=f"{kind}/{folder.name}", pinned=pins.get((kind, row["name"]), ""),
                   archive=archive.name if archive else "",
                   sha256=sha256(archive) if archive else "")
        if not archive:
            print(f"warning: {kind} {row['name']}: no archive in {cache}", file=sys.stderr)
        elif row["version"] != row["pinned"]:
            print(f"warning: {kind} {row['name']} {row['version']} is not the pinned version "
                  f"({row['pinned'] or 'none'}): fetched before the pin, or the archive has "
                  "the pinned one no more", file=sys.stderr)
        rows.append(row)
debian = pathlib.Path("/etc/debian_version")
manifest = {"written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "debian_version": debian.read_text().strip() if debian.is_file() else "",
            "packages": rows}
tmp = dest / "manifest.json.tmp"
tmp.write_text(json.dumps(manifest, indent=1) + "\n")
os.replace(tmp, dest / "manifest.json")
print(f"manifest of {len(rows)} packages: {dest / 'manifest.json'}")
PY
du -sh "$DEST"/deb/* "$DEST"/npm/* 2>/dev/null || true
