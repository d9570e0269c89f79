"""The engine every trigger calls: one host session (session.py) under the flows of the
hook calls (hooks.py), NIC events (nic.py) and the command line (admin.py)."""
