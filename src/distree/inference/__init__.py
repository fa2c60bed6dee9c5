"""The early-exit core: the stage loop, its cost rule, the in-process executor and offline
execution over recorded outputs. Evaluation, training, the runtime and the simulator all
stand on it; it imports none of them."""
