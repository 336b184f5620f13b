"""Model loading and the generation pipeline: text → video, image → video, long video, questions about media."""
