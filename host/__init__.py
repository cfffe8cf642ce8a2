"""TinyFleet host side: references, coordinator, board tooling and the `tinyfleet` CLI."""

__version__ = "0.1.0"
