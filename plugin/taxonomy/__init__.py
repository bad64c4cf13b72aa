"""WordNet 3.0, offline: labels, ancestors, path distances and weights for a collection's classes."""
from plugin.taxonomy.imagenet import imagenet_lemmas, imagenet_wnids
from plugin.taxonomy.taxonomy import Taxonomy, label_of, synset_of, synset_payload, synsets_of, wnid_of
from plugin.taxonomy.wordnet import prepare_nltk_wordnet, wordnet

__all__ = ["Taxonomy", "imagenet_lemmas", "imagenet_wnids", "label_of", "prepare_nltk_wordnet", "synset_of",
           "synset_payload", "synsets_of", "wnid_of", "wordnet"]
