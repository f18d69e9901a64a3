"""Video input: the paper's clip sampling, streaming PyAV decoding, video sources, datasets, synthetic data."""

from vidconv_deploy.data.dataset import EvalClips, SkipReport, TrainClips, eval_clips, train_clips
from vidconv_deploy.data.sampling import KINETICS, SSV2, Protocol, eval_indices, get_protocol, train_indices
from vidconv_deploy.data.sources import VideoItem, VideoSource, open_split, read_annotations, scan_folder
from vidconv_deploy.data.video import BadVideo, load_clips, probe, read_frames

__all__ = [
    "KINETICS", "SSV2", "BadVideo", "EvalClips", "Protocol", "SkipReport", "TrainClips", "VideoItem", "VideoSource",
    "eval_clips", "eval_indices", "get_protocol", "load_clips", "open_split", "probe", "read_annotations",
    "read_frames", "scan_folder", "train_clips", "train_indices",
]
