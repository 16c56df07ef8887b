"""Imported by a warm stage server in tests/test_warm.py: leaves a thread running in it, as a library
that starts a worker thread when it is imported would."""

import threading

threading.Thread(target=threading.Event().wait, name="left-running", daemon=True).start()
