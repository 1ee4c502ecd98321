"""Side-by-side evaluation of refiners (CascadePSP's protocol): `python -m eval --help`."""
