"""rewardserve. `service.__version__` is the installed distribution's version (pyproject.toml's,
the one place it is written), read on first use so importing the client stays light."""


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rewardserve")
    except PackageNotFoundError:  # a source tree on the path, never installed
        return "0+unknown"
