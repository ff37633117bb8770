"""Memory and time profiling of distillers: one point per fresh process, sweeps, NVML, tables and figures."""
