"""`python -m benchmarks.child MODULE:FUNCTION`: run one measurement in this fresh process.

The arguments arrive as a JSON object on stdin; the answer goes to stdout as one JSON line marked
with `common.RESULT_MARK`. The environment (SOFTHSM2_CONF above all) is set by the parent, so
the first PKCS#11 module load in this process sees the right SoftHSM instance.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module

from benchmarks.common import RESULT_MARK


def main() -> None:
    target = sys.argv[1]
    module_name, _, function_name = target.partition(":")
    args = json.loads(sys.stdin.read() or "{}")
    function = getattr(import_module(f"benchmarks.{module_name}"), function_name)
    result = function(**args)
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
