"""The parts of the AIRM network, one file per component of the paper."""
