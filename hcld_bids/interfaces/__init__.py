"""nipype interfaces of hcld-bids: small SimpleInterface classes, each wrapping one function."""
