from deepfuse_plugin.data.perovskites import load_castelli_perovskites  # noqa: F401
