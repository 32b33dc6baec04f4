"""diffkit.metrics: FID/KID (clean-fid, torchmetrics or diffkit backends), feature extractors,
statistics caching, and the FID-digits protocol."""

from .features import (CleanFIDInception, FeatureExtractor, InceptionWeightsError, ModuleFeatures,
                       TorchmetricsInception, get_feature_extractor)
from .fid import (BACKENDS, FIDResult, FIDStats, ModelSamples, ProtocolWarning, compute_fid, compute_kid,
                  compute_stats, load_stats, save_stats)
from .frechet import feature_stats, frechet_distance, kid_from_features

try:  # the FID-digits protocol (assets issue); absent in versions without it
    from .digits import *  # noqa: F401,F403
except ModuleNotFoundError as e:
    if e.name != f"{__name__}.digits":
        raise
