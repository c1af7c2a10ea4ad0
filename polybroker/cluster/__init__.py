"""Several brokers as one, on a Redis they share (``[cluster]``): each node tells the others
the topic filters its subscribers hold, and hands a published message only to the nodes
that want it, through their Redis streams. The core knows nothing of it: the server plugs
a ``node.ClusterNode`` in as the broker's ``remote``.

Nothing here is imported unless a cluster is configured (``config`` imports no client)."""
