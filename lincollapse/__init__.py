"""lincollapse."""
