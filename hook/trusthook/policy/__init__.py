"""The workload policy manifest (docs/policy.md): its format, placement selectors and the
appraisal of launches against it. Pure."""
