"""``clarion-operator``: placeholder until the operator lands."""

import sys


def main() -> int:
    print("clarion-operator: not built yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
