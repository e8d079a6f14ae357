"""zooscope: audit zoos of pretrained neural networks from their weights alone."""
__version__ = "0.1.0"
__all__ = ["PowerLawFit", "fit_power_law"]


def __getattr__(name):
    # Lazy, so that the Snakefile's parse-time imports (zooscope.config) stay cheap.
    if name in __all__:
        from zooscope.fits import powerlaw as powerlaw_fit

        return getattr(powerlaw_fit, name)
    raise AttributeError(f"module 'zooscope' has no attribute {name!r}")
