"""distree's processes started on this machine: workers and coordinators as local
processes (`local.py`, `LocalCluster`), the runtime demo (`demo.py`, `distree demo`), network
namespaces with shaped links (`testbed.py`) and the fault soak (`chaos.py`)."""
