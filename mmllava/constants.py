"""Constants shared by data, model and export code."""

IGNORE_INDEX = -100
# Placeholder id for one image position inside training batches; never embedded.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = '<image>'
