"""Beyond one machine, on Ray: `actstream batch` (a pool of actors relabelling an archive of recordings, each
recording one unit) and `actstream serve --cluster` (live streams spread over shard actors, each a many-stream
`Server` of stream/serve.py, publishing into one forwarder). Ray is the `cluster` extra: nothing here imports it
until it is used."""
