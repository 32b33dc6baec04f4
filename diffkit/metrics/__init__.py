"""diffkit.metrics: FID/KID (clean-fid, torchmetrics or diffkit backends), feature extractors,
statistics caching, and the FID-digits protocol."""

from .features import (CleanFIDInception, DigitsFeatures, FeatureExtractor, InceptionWeightsError, ModuleFeatures,
                       TorchmetricsInception, get_feature_extractor)
from .fid import (BACKENDS, FIDResult, FIDStats, ModelSamples, ProtocolWarning, compute_fid, compute_kid,
                  compute_stats, evaluate, load_stats, save_stats)
from .frechet import feature_stats, frechet_distance, kid_from_features

try:  # the FID-digits protocol (assets issue); absent in versions without it
    from .digits import (PROTOCOL, MemorisationResult, ReferenceStats, classify, compute_reference_stats,
                         digits_features, fid_digits, load_reference_stats, memorisation_ratio, top1_accuracy)
    from .digits import FIDResult as DigitsFIDResult  # `FIDResult` here is compute_fid's record
except ModuleNotFoundError as e:
    if e.name != f"{__name__}.digits":
        raise
