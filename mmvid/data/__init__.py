"""Data: video I/O at the model boundary, conversations (mmvid/LLaVA, LLaVA-Video-178K, ShareGPT) and
their validation, LLaVA-NeXT data mixtures."""

from mmvid.data.conversations import (
    FORMATS,
    VIDEO_PLACEHOLDER,
    DataFile,
    DataFormatError,
    check_sample,
    load_conversations,
    read_data_file,
    sample_videos,
)
from mmvid.data.mixture import read_training_data
from mmvid.data.video_io import (
    DecodedVideo,
    VideoDecodeError,
    VideoTooShortError,
    available_backends,
    frames_to_tensor,
    plan_frame_indices,
    read_video,
    resize_center_crop,
    tensor_to_frames,
    write_video,
)

__all__ = [
    "FORMATS",
    "VIDEO_PLACEHOLDER",
    "DataFile",
    "read_data_file",
    "read_training_data",
    "DataFormatError",
    "DecodedVideo",
    "VideoDecodeError",
    "VideoTooShortError",
    "available_backends",
    "check_sample",
    "frames_to_tensor",
    "load_conversations",
    "plan_frame_indices",
    "read_video",
    "resize_center_crop",
    "sample_videos",
    "tensor_to_frames",
    "write_video",
]
