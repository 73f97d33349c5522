"""A tiny command-line todo list."""
