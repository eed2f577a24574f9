"""Pure decisions and typed records: no I/O, table-tested."""
