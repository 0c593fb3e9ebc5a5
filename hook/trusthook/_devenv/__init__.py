"""Development parts: a real swtpm, a busybox bundle, an agent process. Used by ``trusthook
demo``, the tests and the benchmarks; never by the hook, the shim or the agent itself."""
