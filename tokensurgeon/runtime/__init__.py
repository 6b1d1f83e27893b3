"""Process-level concerns shared by every layer: devices, progress, quiet imports, memory, caches."""
