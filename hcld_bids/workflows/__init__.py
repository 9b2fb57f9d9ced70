"""nipype workflows of hcld-bids (``init_*_wf`` factories)."""
