"""BIDS input and output: validation, querying, sites, and the derivatives writer."""
