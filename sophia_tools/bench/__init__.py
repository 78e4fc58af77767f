"""``sophia-profile`` benchmarks: each measures one library package's hot path and prints JSON."""
