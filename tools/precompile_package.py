"""Add compiled bytecode to the deployment package `chalice package` wrote, so a cold Lambda does not compile.

Lambda unpacks the package into a read-only folder, so Python cannot keep what it compiles: a package without
``__pycache__`` compiles app.py, chalicelib and every dependency from source on every cold start. Measured on the
REST path (``import app`` and building the service, the package unzipped, read-only, ``python3.11 -I -S``): about
200 ms from source against about 85 ms with this bytecode (docs/performance.md). Chalice builds the zip itself and
has no hook for this, so ``make package`` rewrites the zip after it.

Bytecode belongs to one Python minor version: the runtime ``sam.json`` names must be the Python running this
script (Chalice chose that runtime from it). The ``.pyc`` files are *checked-hash*: Python verifies each against
the hash of the source beside it, so bytecode can never run stale code, and no file timestamps are involved
(zip archives keep them at two-second resolution, in local time).

    python tools/precompile_package.py build/      # the folder holding sam.json and deployment.zip
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import py_compile
import sys
import tempfile
import zipfile
from pathlib import Path


def runtimes(template: Path) -> set[str]:
    """The Lambda runtimes the template's functions use."""
    resources = json.loads(template.read_text(encoding="utf-8"))["Resources"]
    return {
        str(resource["Properties"]["Runtime"])
        for resource in resources.values()
        if resource["Type"] in {"AWS::Serverless::Function", "AWS::Lambda::Function"}
    }


def precompile(package: Path) -> int:
    """Rewrite the zip with a checked-hash ``.pyc`` beside every module that compiles; returns how many."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "package"
        with zipfile.ZipFile(package) as original:
            entries = original.infolist()
            original.extractall(root)
        before = set(root.rglob("*.pyc"))
        # Modules that do not compile (templates, other Python versions' code) are left to fail at import,
        # as they would without this step; quiet=2 keeps their syntax errors out of the build log.
        compileall.compile_dir(
            root,
            quiet=2,
            stripdir=str(root),
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            workers=os.cpu_count() or 1,
        )
        added = sorted(set(root.rglob("*.pyc")) - before)
        rewritten = package.with_suffix(".tmp")
        with zipfile.ZipFile(rewritten, "w", compression=zipfile.ZIP_DEFLATED) as target:
            for entry in entries:  # the original entries first, with their permissions and order
                target.writestr(entry, (root / entry.filename).read_bytes() if not entry.is_dir() else b"")
            for pyc in added:
                info = zipfile.ZipInfo(pyc.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                target.writestr(info, pyc.read_bytes())
        rewritten.replace(package)
        return len(added)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help="the folder `chalice package` wrote (sam.json, deployment.zip)")
    args = parser.parse_args(argv)
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    wanted = runtimes(args.folder / "sam.json")
    if wanted != {here}:
        print(f"precompile: the template's runtimes {sorted(wanted)} are not {here}; bytecode would not load")
        return 1
    count = precompile(args.folder / "deployment.zip")
    print(f"precompile: {count} modules compiled for {here} into {args.folder / 'deployment.zip'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
