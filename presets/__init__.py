"""Shipped expression and pose presets (TOML files); see icface_video/presets.py for the format."""
