"""An OpenAI-compatible server for a VideoLLM, with video input, text-to-video, and a chat page.

    python -m mmvid.serve --model runs/sft-default/final --port 8000       # also installed as mmvid-serve

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="mmvid", messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}},
        {"type": "text", "text": "What moves?"}]}])

`create_app(model, ServeSettings(...))` builds the FastAPI app (tests drive it in-process); `main` runs it
under uvicorn. See `mmvid/serve/app.py` for the endpoints and README "Serving" for their shapes.
"""

from mmvid.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
