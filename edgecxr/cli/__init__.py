"""The `edgecxr` command line: one module per core command; stage commands live in their stages."""
