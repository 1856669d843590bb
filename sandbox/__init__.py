"""Isolated execution of untrusted, model-written code (planned).

This package reserves the ``reasonrl.sandbox`` namespace. It provides no
execution API yet: the code verifier that needs it does not exist yet either,
so nothing in reasonrl runs model-written code today.
"""
