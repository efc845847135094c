"""Photos and video classified at the engine's speed: one source interface over video files, cameras, network streams
and image folders (jetson-inference's ``videoSource``), decoded and preprocessed in a producer thread ahead of inference."""
