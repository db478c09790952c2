"""The admin API (Litestar), shipped as ``lmcache_native.api``."""
