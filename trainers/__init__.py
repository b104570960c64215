"""Proxy training: datasets on the device and a short fit loop. Imports nothing from ``nas``."""
