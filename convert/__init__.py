"""edgecxr.convert stage."""
