"""WordNet semantics (hierarchical-loss-inference-retrieval paper): inference, CRM, loss, trainer, search modes, metrics."""
