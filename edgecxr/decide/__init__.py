"""When not to answer: temperature, conformal sets, the OOD head and its cuts, their refits and reports."""
