"""What every report runs under: the native op's CPU kernel path and the Keras dtype policy.

Both are handed on through the environment, so that the RSS subprocesses a report starts run
the same path and policy as their parent.
"""
import os

ISA_CHOICES = ("avx512", "avx2", "generic", "auto")
POLICY_CHOICES = ("float32", "mixed_bfloat16", "mixed_float16")
POLICY_ENV = "PYAE_BENCH_POLICY"


def add_options(parser, policy_help):
    parser.add_argument("--isa", choices=ISA_CHOICES,
                        help="the native op's CPU kernel path (default: PYAE_ISA or the best)")
    parser.add_argument("--policy", choices=POLICY_CHOICES, default="float32", help=policy_help)


def apply(options, child):
    """Sets the path and policy for this process and its subprocesses; a subprocess (`child`)
    keeps the policy its parent set."""
    if options.isa:
        os.environ["PYAE_ISA"] = options.isa  # read at the op's first call
    if not child:
        os.environ[POLICY_ENV] = options.policy


def policy():
    return os.environ.get(POLICY_ENV, "float32")


def isa_line(info):
    """The native op's CPU kernel path (from `pyae.ops.build_info()`), and what the stock
    layers' oneDNN may use."""
    isa = info.get("isa") or {}
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "unset (the best this CPU has)")
    return (f"CPU kernel path: {isa.get('active')} ({isa.get('reason')}); built "
            f"{isa.get('built')}, this CPU runs {isa.get('supported')}; "
            f"ONEDNN_MAX_CPU_ISA={onednn}")
