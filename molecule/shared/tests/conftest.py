"""The shared fixtures (fixtures.py) for these checks; molecule/lifecycle imports the same ones."""

from fixtures import host, login_check, prosody_log, proxy_config, scenario, served_cafile

__all__ = ["host", "login_check", "prosody_log", "proxy_config", "scenario", "served_cafile"]
