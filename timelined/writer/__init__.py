"""The single writer: the engine, the rules it checks commands with, its hot state and thread."""
