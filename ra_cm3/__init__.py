"""ra_cm3 package."""
