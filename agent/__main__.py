"""`python -m agent` and the pyz entry (build/entry.py) both land in agent.cli.main."""
import sys

if __name__ == "__main__":
    from agent.cli import main
    sys.exit(main())
