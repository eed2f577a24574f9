"""Stage a package for shiv: *.py only, no __pycache__, slimmed (slim.py), modes 0644/0755.

usage: python build/stage.py SRC_PACKAGE_DIR DEST_PACKAGE_DIR

What a checkout holds besides the sources (bytecode, editor files, odd modes, mtimes) must not
reach the archive, or two clean builds would differ. Build-time only.
"""

import os
import sys

from slim import slim


def sources(src):
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                yield path, os.path.relpath(path, src)


def stage(src, dest):
    files = []
    for path, rel in sources(src):
        with open(path, encoding="utf-8") as f:
            files.append((rel, f.read()))
    if not any(rel == "__init__.py" for rel, _ in files):
        raise SystemExit("stage: %s is not a package (no __init__.py)" % src)
    # A module reading __doc__ (its own or another's) would change behaviour without docstrings.
    docstrings = not any("__doc__" in text for _, text in files)
    raw = slimmed = 0
    for rel, text in files:
        out = slim(text, rel, docstrings=docstrings)
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        with open(target, "w", encoding="utf-8", newline="") as f:
            f.write(out)
        os.chmod(target, 0o644)
        raw += len(text.encode("utf-8"))
        slimmed += len(out.encode("utf-8"))
    for dirpath, _, _ in os.walk(dest):
        os.chmod(dirpath, 0o755)
    print("stage: %d modules, %d -> %d bytes of source%s"
          % (len(files), raw, slimmed, "" if docstrings else " (docstrings kept: __doc__ is used)"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2])
    stage(sys.argv[1], sys.argv[2])
