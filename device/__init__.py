"""Everything a Raspberry Pi needs to run an edgecxr model: numpy, a TFLite
interpreter and these files. Nothing in here may import torch or edgecxr core."""
