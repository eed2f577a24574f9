"""Start-up only: configuration files and flags into typed Settings."""
