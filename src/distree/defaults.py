"""Names users meet on the command line before anything is loaded, as plain constants that
import nothing: the command line's parser reads them from here, so that ``distree --help``,
``--version``, ``health`` and ``infer`` run on a client's install (distree's core, without
pydantic or PyYAML) and a board's onnxruntime worker never imports torch. The modules that
validate or use them (``distree.config``, ``distree.runtime.cluster``,
``distree.simulation.scenario``) take them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The environment variable a data set path is read from when ``--data`` is not given.
DATA_ENV_VAR = "DISTREE_DATA"
#: The environment variable listing policy plugin modules (comma-separated).
PLUGINS_ENV_VAR = "DISTREE_PLUGINS"
#: The data set formats ``--format`` names (``distree.data.loading.FORMATS`` reads them).
DATA_FORMATS = ("image-folder", "cifar10-python", "idx", "npz")
#: What the runtime, the demo, ``distree.load`` and the client use unless told otherwise:
#: softmax confidence, the policy that saves the most computation within its accuracy
#: target on the shipped models (tests/policies/test_default_policy.py checks it against
#: their recorded evaluations). The paper's feature criteria stay available by name.
DEFAULT_POLICY = "max-prob"
#: What ``distree demo`` compares with full execution: the default policy first, then the
#: feature criterion that predicts best whether an exit is right (``FeatureAgreement``).
DEMO_POLICIES = (DEFAULT_POLICY, "feature-agreement")
#: What ``distree sweep --param`` varies (``distree.simulation.sweep``).
SWEEP_PARAMS = ("devices", "bandwidth", "rtt", "rate", "availability")


@dataclass(frozen=True)
class _ServeDefaults:
    listen: str = "127.0.0.1:50051"
    policy: str = DEFAULT_POLICY
    mode: str = "lockstep"  # or "eager"
    backend: str = "torch"  # where the exit heads run, or "onnxruntime" (on an export)


#: What ``serve`` uses for what neither a flag nor a cluster file sets: the defaults of a
#: cluster file's ``coordinator`` entry (``distree.runtime.cluster.CoordinatorEntry``).
SERVE_DEFAULTS = _ServeDefaults()
