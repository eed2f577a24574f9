"""`python -m agent` and the pyz entry both land here."""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["_resolve"]:  # a reload's short-lived config parse
        from agent.launch import resolve_main
        sys.exit(resolve_main(sys.argv[2:]))
    from agent.cli import main
    sys.exit(main())
