"""Low-level I/O shared by every stage: checksummed local files, fsspec transport, the verified file cache,
and the one background-thread helper. Knows nothing of stores or manifests."""
