"""`flowdpo-operator` / `python -m flowdpo_operator`: placeholder until the operator lands (issue #4)."""

import sys


def main() -> int:
    print("flowdpo-operator: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
