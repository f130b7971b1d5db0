"""Fleet-wide state in Redis: key names, connection pools, and the atomic scripts over them."""
