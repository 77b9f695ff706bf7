"""scripts/fetch_sources.sh asks for the pinned versions and writes DEST/manifest.json of what DEST
holds (version, pin, archive, SHA-256), also when it fetches nothing; `train.prepare_corpus
--fetched` copies it into summary.json. Offline: `npm`, `apt-get` and `apt-cache` are stubs that
log their calls and make small archives as the real ones would name them."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fetch_sources.sh"

pytestmark = pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("dpkg")),
                                reason="needs dpkg-deb and dpkg (Debian tools)")

STUBS = {
    "npm": r"""
echo "npm $*" >> "$STUB_LOG"
if [ "$*" = "config get registry" ]; then echo https://registry.example/; exit 0; fi
[ "$1" = pack ] || exit 1
spec="${*: -1}"; name="${spec%@*}"; version="${spec##*@}"
base="${name#@}"; base="${base//\//-}"; tmp="$(mktemp -d)"; mkdir "$tmp/package"
printf '{"name": "%s", "version": "%s"}\n' "$name" "$version" > "$tmp/package/package.json"
for i in $(seq 20); do
  printf '/** Adds %s to x. */\nfunction add%s(x) {\n  return x + %s;\n}\n\n' $i $i $i
done > "$tmp/package/index.js"
tar -czf "$base-$version.tgz" -C "$tmp" package && echo "$base-$version.tgz"
""",
    # STUB_APT_HAS: the one version of every package the stub archive has.
    "apt-get": r"""
echo "apt-get $*" >> "$STUB_LOG"
[ "$1" = download ] || exit 1
pkg="${2%%=*}"; [ "$2" = "$pkg" ] || [ "${2#*=}" = "$STUB_APT_HAS" ] || exit 100
tmp="$(mktemp -d)"; mkdir -p "$tmp/DEBIAN" "$tmp/usr/share/lua/5.1/pl"
control="$tmp/DEBIAN/control"
printf 'Package: %s\nVersion: %s\nArchitecture: all\n' "$pkg" "$STUB_APT_HAS" > "$control"
printf 'Maintainer: t <t@example.org>\nDescription: t\n' >> "$control"
echo 'local function add(x) return x + 1 end' > "$tmp/usr/share/lua/5.1/pl/add.lua"
dpkg-deb --build --root-owner-group "$tmp" "${pkg}_${STUB_APT_HAS}_all.deb" > /dev/null
""",
    "apt-cache": r"""
printf '%s:\n  Installed: (none)\n  Candidate: %s\n  Version table:\n' "$2" "$STUB_APT_HAS"
printf ' *** 0.1-1 100\n        100 /var/lib/dpkg/status\n'
printf '     %s 500\n        500 http://deb.example/debian bookworm/main all Packages\n' \
  "$STUB_APT_HAS"
""",
}


def pin(name: str) -> str:
    """The version the script pins `name` to (`name=VERSION` or `name@VERSION`)."""
    match = re.search(rf"(?<![\w@/.-]){re.escape(name)}[=@]([\w.+~-]+)", SCRIPT.read_text())
    assert match, name
    return match[1]


@pytest.fixture
def fetch(tmp_path):
    """Runs the script with the stubs first on PATH; returns (exit status, stderr, calls)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/usr/bin/env bash\nset -eu\n" + body)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*args: str, apt_has: str = "") -> tuple[int, str, list[str]]:
        log.write_text("")
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log),
               "STUB_APT_HAS": apt_has}
        done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=120)
        return done.returncode, done.stderr, log.read_text().splitlines()

    return run


def manifest(dest: Path) -> dict[str, dict]:
    """The manifest's rows by directory, each row checked against the archive it names."""
    rows = json.loads((dest / "manifest.json").read_text())["packages"]
    for row in rows:
        if row["archive"]:
            digest = hashlib.sha256((dest / ".cache" / row["archive"]).read_bytes()).hexdigest()
            assert row["sha256"] == digest, row
    return {row["dir"]: row for row in rows}


def test_fetch_asks_for_the_pins_and_records_what_it_got(tmp_path, fetch):
    dest = tmp_path / "sources"
    status, err, calls = fetch(str(dest), "acorn", "lua-penlight", apt_has=pin("lua-penlight"))
    assert status == 0, err
    assert calls == [f"apt-get download lua-penlight={pin('lua-penlight')}",
                     f"npm pack --silent acorn@{pin('acorn')}", "npm config get registry"]
    rows = manifest(dest)
    assert rows == {
        "deb/lua-penlight": {
            "kind": "deb", "name": "lua-penlight", "version": pin("lua-penlight"),
            "pinned": pin("lua-penlight"), "dir": "deb/lua-penlight",
            "archive": f"lua-penlight_{pin('lua-penlight')}_all.deb",
            "sha256": rows["deb/lua-penlight"]["sha256"],
            "origin": "http://deb.example/debian bookworm/main"},
        "npm/acorn": {
            "kind": "npm", "name": "acorn", "version": pin("acorn"), "pinned": pin("acorn"),
            "dir": "npm/acorn", "archive": f"acorn-{pin('acorn')}.tgz",
            "sha256": rows["npm/acorn"]["sha256"], "origin": "https://registry.example/"}}
    assert (dest / "deb/lua-penlight/usr/share/lua/5.1/pl/add.lua").is_file()
    assert "warning" not in err

    # Once apt's archive has moved on, the candidate is fetched and recorded as such.
    status, err, calls = fetch(str(tmp_path / "later"), "lua-penlight", apt_has="1.13.1-9")
    assert status == 0, err
    assert calls[:2] == [f"apt-get download lua-penlight={pin('lua-penlight')}",
                         "apt-get download lua-penlight"]
    row = manifest(tmp_path / "later")["deb/lua-penlight"]
    assert (row["version"], row["pinned"]) == ("1.13.1-9", pin("lua-penlight"))
    assert f"apt has no lua-penlight {pin('lua-penlight')} any more" in err
    assert "deb lua-penlight 1.13.1-9 is not the pinned version" in err


def test_a_rerun_fetches_nothing_and_records_everything_there(tmp_path, fetch):
    dest = tmp_path / "sources"
    fetch(str(dest), "acorn", "@types/node", "lua-penlight", apt_has=pin("lua-penlight"))
    # Another version's archive of a package beside the pinned one (and newer), a package
    # fetched before the pins (at another version), one whose archive was deleted, and
    # @types/node's node/ folder.
    subprocess.run([tmp_path / "stubs" / "apt-get", "download", "lua-penlight"], check=True,
                   cwd=dest / ".cache", env={**os.environ, "STUB_APT_HAS": "0.9-1",
                                             "STUB_LOG": os.devnull})
    os.utime(dest / ".cache" / "lua-penlight_0.9-1_all.deb", (4e9, 4e9))
    for name, version, keep in (("underscore", "1.13.6", True), ("zod", pin("zod"), False)):
        (dest / "npm" / name / "package").mkdir(parents=True)
        (dest / "npm" / name / "package" / "package.json").write_text(
            json.dumps({"name": name, "version": version}))
        if keep:
            with tarfile.open(dest / ".cache" / f"{name}-{version}.tgz", "w:gz") as tgz:
                tgz.add(dest / "npm" / name / "package", "package")
    node = dest / "npm" / "types__node"
    (node / "package").rename(node / "node")

    for args in (["--manifest-only"], ["acorn"]):  # acorn is there: skipped
        status, err, calls = fetch(str(dest), *args)
        assert status == 0, err
        assert not [c for c in calls if "pack" in c or "download" in c], calls
        rows = manifest(dest)
        assert sorted(rows) == ["deb/lua-penlight", "npm/acorn", "npm/types__node",
                                "npm/underscore", "npm/zod"]
        assert rows["deb/lua-penlight"]["archive"] == f"lua-penlight_{pin('lua-penlight')}_all.deb"
        assert rows["npm/types__node"]["name"] == "@types/node"
        assert rows["npm/types__node"]["archive"] == f"types-node-{pin('@types/node')}.tgz"
        assert (rows["npm/underscore"]["version"], rows["npm/underscore"]["pinned"]) == (
            "1.13.6", pin("underscore"))
        assert rows["npm/zod"]["archive"] == rows["npm/zod"]["sha256"] == ""
        assert "npm underscore 1.13.6 is not the pinned version" in err
        assert f"npm zod: no archive in {dest / '.cache'}" in err


def test_an_unknown_package_is_refused(tmp_path, fetch):
    status, err, calls = fetch(str(tmp_path / "s"), "leftpad")
    assert status == 2 and err == f"error: leftpad is not a package of {SCRIPT}\n"
    assert calls == []


def test_prepare_corpus_copies_the_manifest_into_the_summary(tmp_path, fetch, capsys):
    from train.prepare_corpus import main

    dest = tmp_path / "sources"
    fetch(str(dest), "acorn", "lua-penlight", apt_has=pin("lua-penlight"))
    args = ["--fetched", str(dest), "--no-default-sources", "--no-pairs", "--no-measure",
            "--vocab-size", "320", "--out", str(tmp_path / "data")]
    main(args)
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert summary["fetched"] == json.loads((dest / "manifest.json").read_text())
    assert "JavaScript" in summary["corpus"]["files"]

    (dest / "manifest.json").unlink()  # a folder fetched before the script wrote one
    main([*args, "--overwrite"])
    assert "fetched" not in json.loads((tmp_path / "data" / "summary.json").read_text())
    assert (f"warning: --fetched {dest} has no manifest.json" in capsys.readouterr().err)
