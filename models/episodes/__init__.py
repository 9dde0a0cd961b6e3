"""Episodes as data: the RLDS-style shard format, robot episodes as records, and tf.data readers."""
