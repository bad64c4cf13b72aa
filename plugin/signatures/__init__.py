"""Describing an image through the hierarchy (semantics-image-retrieval-hierarchical-db): hand-made
features, per-synset visual signatures (information-loss clustering, dominant clusters), VP-trees,
branch selection, Extended OR-Inc pruning and CombSUM fusion into general and specific semantics."""
