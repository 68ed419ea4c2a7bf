"""SeReNe regularization: neurons and their PSPs, sensitivities (exact, LB, UB, local), update rules (SeReNe,
LOBSTER, ℓ2) and the regularize → threshold procedure (SeReNe Alg. 1–2)."""

from .neurons import NeuronGraph, NeuronLayer, find_neurons, neuron_alive
from .sensitivity import METHODS, neuron_sensitivity

__all__ = ["METHODS", "NeuronGraph", "NeuronLayer", "find_neurons", "neuron_alive", "neuron_sensitivity"]
