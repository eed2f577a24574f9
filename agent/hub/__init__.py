"""`sshkeep hub`: the hub operator's view of the boxes' records."""
