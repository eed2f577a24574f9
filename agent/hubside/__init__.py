"""What is sent to, or runs on, the hub inside a box's session."""
