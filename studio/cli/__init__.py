"""`studio-cli`: generate, info and models from a terminal (main.py), with its grid, upscale, outpaint and
adapter options in modules of their own."""
