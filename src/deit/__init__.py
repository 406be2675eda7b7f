"""DeiT."""
