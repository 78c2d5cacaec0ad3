"""One router per resource (MONAI Label's names where the operation exists)."""
