"""`predict`: top-k classes for an image or a folder, from a registered or logged model; `reregister`:
weights/ for a version logged before freezeframe wrote them (predict and weights= never unpickle)."""

from __future__ import annotations

import argparse

from pipelines.errors import ConfigError
from pipelines.inference.classify import image_inputs, write_csv
from pipelines.inference.classify import predict as classify
from tracking.models.model_store import load_for_inference
from tracking.store import ensure_access


def predict(args: argparse.Namespace, cfg: None, sections: dict) -> int:
    if not args.input:
        raise ConfigError("predict needs --input (-P input=...): an image file or a folder of images")
    if args.top_k < 1:
        raise ConfigError(f"--top_k must be >= 1, got {args.top_k}")
    # a bad file fails before the (slower) model load; each image is decoded once, here or in classify
    inputs = image_inputs(args.input)
    ensure_access()  # a server's missing credentials in one line, not an HTTP 401 from deep in a download
    model, metadata = load_for_inference(args.model)
    predictions = classify(model, metadata, inputs, top_k=args.top_k)
    for p in predictions:
        print(f"{p.path}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in p.top))
    if len(predictions) > 1 or args.output:
        output = args.output or "predictions.csv"
        write_csv(predictions, output)
        print(f"wrote {output} ({len(predictions)} images)")
    return 0


def reregister(args: argparse.Namespace, cfg: None, sections: dict) -> int:
    from tracking.models.legacy_models import reregister as add_weights

    ensure_access()
    print(add_weights(args.model))
    return 0
