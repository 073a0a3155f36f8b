"""Developer tools run by hand or by `make`, outside the pipeline: nothing in the library imports them."""
