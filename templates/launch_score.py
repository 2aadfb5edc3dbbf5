"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE) for `textclf score`."""

import sys

from flex_launch import launch

if __name__ == "__main__":
    sys.exit(launch("score", sys.argv[1:]))
