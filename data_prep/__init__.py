"""Dataset importers, validation, datalists and synthetic phantoms for medmtl."""
