"""murag package."""
