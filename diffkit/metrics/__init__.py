"""diffkit.metrics: FID/KID (clean-fid, torchmetrics or diffkit backends), feature extractors,
statistics caching, and the FID-digits protocol.

Two result records with distinct names: :class:`FIDResult` (``compute_fid`` / ``diffkit fid``:
one metric, its backend and protocol) and :class:`DigitsFIDResult` (``fid_digits``: FID and KID
of the FID-digits protocol together)."""

from diffkit.metrics.digits import (PROTOCOL, DigitsFIDResult, MemorisationResult, ReferenceStats, classify,
                                    compute_reference_stats, digits_features, fid_digits, load_reference_stats,
                                    memorisation_ratio, top1_accuracy)
from diffkit.metrics.features import (CleanFIDInception, DigitsFeatures, FeatureExtractor, InceptionWeightsError,
                                      ModuleFeatures, TorchmetricsInception, get_feature_extractor)
from diffkit.metrics.fid import (BACKENDS, FIDResult, FIDStats, ModelSamples, ProtocolWarning, compute_fid,
                                 compute_kid, compute_stats, evaluate, load_stats, save_stats)
from diffkit.metrics.frechet import feature_stats, frechet_distance, kid_from_features

__all__ = [
    "PROTOCOL", "DigitsFIDResult", "MemorisationResult", "ReferenceStats", "classify", "compute_reference_stats",
    "digits_features", "fid_digits", "load_reference_stats", "memorisation_ratio", "top1_accuracy",
    "CleanFIDInception", "DigitsFeatures", "FeatureExtractor", "InceptionWeightsError", "ModuleFeatures",
    "TorchmetricsInception", "get_feature_extractor", "BACKENDS", "FIDResult", "FIDStats", "ModelSamples",
    "ProtocolWarning", "compute_fid", "compute_kid", "compute_stats", "evaluate", "load_stats", "save_stats",
    "feature_stats", "frechet_distance", "kid_from_features",
]
