"""Intake: watching the inbox, finding complete bundles, claiming them, unpacking archives, delivering results."""
