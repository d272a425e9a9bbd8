"""edgecxr.bench stage."""
