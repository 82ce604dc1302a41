"""The exactness contract of emma_core.prompt, as the host tests check it: a context used by a model call is
within CONTEXT_RTOL (relative to its largest |value|) of the context computed for that call's timestep alone."""
from host_recording import pack_module

WORST = {"relative error": 0.0}  # the largest seen in this process (the tests print it with -s)


def assert_within_contract(got, want, what=""):
    rtol = pack_module("emma_core.prompt").CONTEXT_RTOL
    error = float((got - want).abs().max() / want.abs().max())
    WORST["relative error"] = max(WORST["relative error"], error)
    assert error <= rtol, (what, error, rtol)
    return error
