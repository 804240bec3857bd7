"""The torture run (issue #9): core.py runs the scenarios and writes the report; flood.py is one
flood process (started by core.py as ``python -m tests.torture.flood``), fuzz.py the hostile
input, xmpp.py a minimal blocking XMPP client. Command line: bench/torture.py."""
