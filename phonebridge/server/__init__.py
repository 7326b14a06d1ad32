"""The process: the aiohttp app, workers, settings, metrics, logs, heap and preflight checks."""
