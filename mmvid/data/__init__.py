"""Data: video I/O at the model boundary, LLaVA-format conversations and their validation."""

from mmvid.data.conversations import (
    VIDEO_PLACEHOLDER,
    DataFormatError,
    check_sample,
    load_conversations,
    sample_videos,
)
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
    "VIDEO_PLACEHOLDER",
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
