"""Exit 1 unless every given Python version can be run as ``pythonX.Y``.

tox skips an environment whose interpreter is missing (so that py314 runs
only where it is installed); this check keeps the supported matrix whole.
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def main(versions: list[str]) -> int:
    missing = []
    for version in versions:
        exe = shutil.which(f"python{version}")
        ok = (
            exe is not None
            and subprocess.run(
                [exe, "-c", "import sys; print(sys.version)"], capture_output=True, check=False
            ).returncode
            == 0
        )
        print(f"python{version}: {'found' if ok else 'MISSING'}")
        if not ok:
            missing.append(version)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
