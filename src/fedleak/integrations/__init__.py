"""Bridges to federated-learning frameworks (optional extras; importing fedleak never needs them).

``fedleak.integrations.flower`` (``pip install 'fedleak[flower]'``): converters between
:class:`~fedleak.fl.ClientUpdate` and Flower records, a server-side audit strategy, a client-side
leakage-check mod and ``run_flower_audit`` on Flower's Simulation Engine.
"""
