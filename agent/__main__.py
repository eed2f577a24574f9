"""`python -m agent` and the pyz entry both land here."""
import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
