"""Tools for developing and measuring distree, outside the product path: a local cluster
of real processes (`cluster.py`) and network namespaces with shaped links (`testbed.py`)."""
