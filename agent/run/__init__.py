"""The resident agent: the loop, its children, probes, state and logs."""
