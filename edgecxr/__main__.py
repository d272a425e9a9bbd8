"""``python -m edgecxr`` (also what ``torchrun -m edgecxr train`` runs)."""
from edgecxr.cli import main

main()
