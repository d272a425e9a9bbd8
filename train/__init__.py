"""Training: supervised fine-tuning and prototypical networks (``edgecxr.train``)."""
