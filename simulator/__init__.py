"""A physical model of passive TiO2 crossbars and emulators of the instruments around it.

May import `instruments` (to implement the interfaces it emulates), never the reverse.
"""
