"""``python -m edgecxr`` (also what ``torchrun -m edgecxr train`` runs)."""
from edgecxr.cli.main import main

main()
